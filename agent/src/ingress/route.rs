//! Where an ingress HTTP request goes, and what of the platform's headers and
//! subprotocols the application must never see.

use hyper::header::{HeaderMap, HeaderValue};
use microvm_protocol::ingress::{self, HEADER_PREFIX};

pub fn is_websocket(h: &HeaderMap) -> bool {
    h.get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Where a request goes, and its headers as the application must see them.
pub fn route(h: &mut HeaderMap) -> Result<u16, String> {
    let websocket = is_websocket(h);
    let offered = ingress::offered(
        h.get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let header = h.get(ingress::PORT_HEADER).map(|v| v.to_str().ok());
    let port = ingress::target_port(header, websocket, &offered)?;
    if websocket {
        let kept: Vec<&str> = offered
            .iter()
            .map(String::as_str)
            .filter(|p| !ingress::is_platform_subprotocol(p))
            .collect();
        h.remove(hyper::header::SEC_WEBSOCKET_PROTOCOL);
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
                h.insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
    }
    let platform: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with(HEADER_PREFIX))
        .cloned()
        .collect();
    for k in platform {
        h.remove(k);
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn port_from_the_header_and_platform_headers_stripped() {
        let mut h = headers(&[
            ("X-aws-proxy-port", "8081"),
            ("x-aws-proxy-auth", "token"),
            ("X-AWS-PROXY-Whatever", "1"),
            ("x-aws-proxyish", "kept"),
            ("accept", "*/*"),
        ]);
        assert_eq!(route(&mut h), Ok(8081));
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["accept", "x-aws-proxyish"]);
        let mut h = headers(&[]);
        assert_eq!(route(&mut h), Ok(8080));
        for bad in ["0", "65536", "http", ""] {
            let mut h = headers(&[("x-aws-proxy-port", bad)]);
            assert!(route(&mut h).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_port_from_the_subprotocol_and_platform_ones_removed() {
        let mut h = headers(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "lambda-microvms, lambda-microvms.authentication.abc, chat",
            ),
            (
                "sec-websocket-protocol",
                "lambda-microvms.port.9090, v2.chat",
            ),
        ]);
        assert_eq!(route(&mut h), Ok(9090));
        assert_eq!(h.get_all("sec-websocket-protocol").iter().count(), 1);
        assert_eq!(h["sec-websocket-protocol"], "chat, v2.chat");
        let mut h = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-protocol", "lambda-microvms.port.7000"),
        ]);
        assert_eq!(route(&mut h), Ok(7000));
        assert!(h.get("sec-websocket-protocol").is_none());
        // Without an upgrade the subprotocol header is the application's business.
        let mut h = headers(&[("sec-websocket-protocol", "lambda-microvms.port.7000")]);
        assert_eq!(route(&mut h), Ok(8080));
        assert!(h.get("sec-websocket-protocol").is_some());
    }
}
