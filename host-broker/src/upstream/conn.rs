//! One HTTP connection to an upstream, HTTP/1.1 or HTTP/2 as the upstream chose by ALPN.
//!
//! The guest's framing (chosen by the guest's ALPN) and the upstream's are independent: a
//! request is re-shaped for the upstream's version here (origin-form + Host for HTTP/1.1,
//! absolute URI = `:authority` for HTTP/2).

use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

/// The request body type: the same type as `proxy::ProxyBody` (spelt out here because the
/// proxy layer sits above this one).
type ProxyBody =
    http_body_util::combinators::BoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A ready-to-use sender to one upstream connection.
pub(crate) enum UpstreamConn {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamConn::H1(_) => "UpstreamConn::H1",
            UpstreamConn::H2(_) => "UpstreamConn::H2",
        })
    }
}

impl UpstreamConn {
    /// Handshakes `io` as HTTP/2 when `h2` (ALPN said so), else HTTP/1.1; the connection is
    /// driven in a task.
    pub async fn handshake<T>(io: T, h2: bool) -> Result<UpstreamConn, hyper::Error>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        if h2 {
            let (sender, conn) = http2::handshake(crate::fair::Executor, TokioIo::new(io)).await?;
            crate::fair::spawn(
                async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                    }
                }
                .in_current_span(),
            );
            Ok(UpstreamConn::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
            crate::fair::spawn(
                async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                }
                .in_current_span(),
            );
            Ok(UpstreamConn::H1(sender))
        }
    }

    /// Whether the upstream speaks HTTP/2 on this connection.
    pub fn is_h2(&self) -> bool {
        matches!(self, UpstreamConn::H2(_))
    }

    /// Whether the connection is gone (peer closed, error).
    pub fn is_closed(&self) -> bool {
        match self {
            UpstreamConn::H1(s) => s.is_closed(),
            UpstreamConn::H2(s) => s.is_closed(),
        }
    }

    /// Whether a request can be sent right now without waiting for another response.
    pub fn is_ready_now(&self) -> bool {
        match self {
            UpstreamConn::H1(s) => s.is_ready(),
            UpstreamConn::H2(s) => s.is_ready(),
        }
    }

    /// Waits until the connection can take a request; `false` if it is gone.
    pub async fn ready(&mut self) -> bool {
        match self {
            UpstreamConn::H1(s) => s.ready().await.is_ok(),
            UpstreamConn::H2(s) => s.ready().await.is_ok(),
        }
    }

    /// A handle for one more concurrent request, if the connection multiplexes (HTTP/2).
    pub fn shared(&self) -> Option<UpstreamConn> {
        match self {
            UpstreamConn::H2(s) => Some(UpstreamConn::H2(s.clone())),
            UpstreamConn::H1(_) => None,
        }
    }

    /// Re-shapes `req` for this connection's version and sends it. `authority` is what the
    /// guest asked for (already checked against the intercepted host).
    pub async fn send(
        &mut self,
        mut req: Request<ProxyBody>,
        scheme: &str,
        authority: &str,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        match self {
            UpstreamConn::H1(s) => {
                *req.version_mut() = Version::HTTP_11;
                *req.uri_mut() = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
                if !req.headers().contains_key(HOST) {
                    if let Ok(v) = HeaderValue::from_str(authority) {
                        req.headers_mut().insert(HOST, v);
                    }
                }
                s.send_request(req).await
            }
            UpstreamConn::H2(s) => {
                *req.version_mut() = Version::HTTP_2;
                let uri = format!("{scheme}://{authority}{pq}");
                *req.uri_mut() = uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
                req.headers_mut().remove(HOST);
                s.send_request(req).await
            }
        }
    }
}
