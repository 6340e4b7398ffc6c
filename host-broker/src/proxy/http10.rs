//! Responses to HTTP/1.0 guests, which have no chunked encoding: a body without
//! `Content-Length` (a scrubbed body always loses it) would be close-delimited, and then an
//! upstream that aborts mid-body looks to the guest exactly like a complete response.
//!
//! Such a body is collected first (at most `max_inspected_body` bytes) and sent with its
//! `Content-Length`. An upstream abort, or a body over the cap, becomes a `502` with a reason
//! instead of a short body that looks whole. Cost: HTTP/1.0 guests get such responses only
//! once complete (no streaming); HTTP/1.1 and HTTP/2 guests are unaffected.

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::body::{self, ProxyBody};

/// Frames `resp` for a guest that spoke `version` (unchanged unless HTTP/1.0 and
/// length-less). `cap`: the most body bytes collected.
pub(super) async fn frame_for(
    resp: Response<ProxyBody>,
    version: Version,
    cap: u64,
) -> Response<ProxyBody> {
    if version != Version::HTTP_10
        || resp.headers().contains_key(CONTENT_LENGTH)
        || resp.body().is_end_stream()
    {
        return resp;
    }
    let (mut parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                // Trailers cannot be sent to an HTTP/1.0 client: dropped, as hyper would.
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > cap {
                        let reason = format!(
                            "response body exceeds {cap} bytes, the most the broker collects to \
                             send an HTTP/1.0 client a Content-Length; use HTTP/1.1"
                        );
                        return failed(&reason);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                let reason = format!("upstream response body ended early: {e}");
                tracing::info!(%reason, "HTTP/1.0 response refused");
                return failed(&reason);
            }
        }
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
    Response::from_parts(parts, body::full(buf.freeze()))
}

fn failed(reason: &str) -> Response<ProxyBody> {
    super::reason_response(
        StatusCode::BAD_GATEWAY,
        reason,
        format!("sluice: {reason}\n"),
    )
}
