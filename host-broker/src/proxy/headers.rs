//! Header helpers: hop-by-hop stripping and request authority comparison.

use http::header::{HeaderMap, HeaderName, CONNECTION, HOST};

/// Headers that belong to one hop (RFC 9110 7.6.1) or to the proxy itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Lowercase host without port or IPv6 brackets: `[::1]:443` -> `::1`, `A.com:8` -> `a.com`.
pub fn host_without_port(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The request's Host header reduced to a host, if present and unique.
pub fn host_header(headers: &HeaderMap) -> Option<String> {
    let mut all = headers.get_all(HOST).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok().map(host_without_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("API.example.com:443"), "api.example.com");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_without_port("example.com."), "example.com");
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-custom, keep-alive".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("proxy-authorization", "Basic abc".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn duplicate_host_is_none() {
        let mut h = HeaderMap::new();
        h.append(HOST, "a".parse().unwrap());
        h.append(HOST, "b".parse().unwrap());
        assert_eq!(host_header(&h), None);
    }
}
