//! The platform's ingress conventions, as the host's proxy and the agent's ingress
//! must both read them: which port a request is for, and which of its headers and
//! WebSocket subprotocols belong to the platform rather than the application. One
//! definition, so that the port a proxy authorizes is the port the agent connects to.

/// The header that carries the auth token.
pub const AUTH_HEADER: &str = "x-aws-proxy-auth";
/// The header that names the target port.
pub const PORT_HEADER: &str = "x-aws-proxy-port";
/// `true`: speak HTTP/2 cleartext (prior knowledge) to the application.
pub const FORCE_H2_HEADER: &str = "x-aws-proxy-force-h2";
/// Every header of the platform starts with this; none reaches the application.
pub const HEADER_PREFIX: &str = "x-aws-proxy-";
/// The subprotocol that carries an auth token (a WebSocket cannot set headers from
/// a browser).
pub const AUTH_SUBPROTOCOL: &str = "lambda-microvms.authentication.";
/// The subprotocol that names a WebSocket's target port.
pub const PORT_SUBPROTOCOL: &str = "lambda-microvms.port.";
/// The application's port when a request names none.
pub const DEFAULT_PORT: u16 = crate::ports::DEFAULT_APP;

/// A port as the platform writes it: 1-65535.
pub fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

/// Whether a subprotocol is the platform's (removed before the application).
pub fn is_platform_subprotocol(p: &str) -> bool {
    p == "lambda-microvms" || p.starts_with(AUTH_SUBPROTOCOL) || p.starts_with(PORT_SUBPROTOCOL)
}

/// The subprotocols offered, in order, from the values of every
/// `Sec-WebSocket-Protocol` header.
pub fn offered<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The port a request is for: for a WebSocket, its `lambda-microvms.port.<n>`
/// subprotocol when it offers one; else the `X-aws-proxy-port` header (`header`,
/// `None` when absent, `Some(None)` when not text); else 8080. A malformed port is
/// an error, never a default.
pub fn target_port(
    header: Option<Option<&str>>,
    websocket: bool,
    offered: &[String],
) -> Result<u16, String> {
    if websocket {
        if let Some(p) = offered
            .iter()
            .find_map(|p| p.strip_prefix(PORT_SUBPROTOCOL))
        {
            return parse_port(p)
                .ok_or_else(|| format!("subprotocol {PORT_SUBPROTOCOL}{p}: not a port (1-65535)"));
        }
    }
    match header {
        None => Ok(DEFAULT_PORT),
        Some(v) => v.and_then(parse_port).ok_or_else(|| {
            format!(
                "{PORT_HEADER}: not a port (1-65535): {:?}",
                v.unwrap_or("(not text)")
            )
        }),
    }
}

/// Whether `X-aws-proxy-force-h2` asks for HTTP/2 (`true`, any case).
pub fn force_h2(header: Option<&str>) -> bool {
    header.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &[&str]) -> Vec<String> {
        offered(s.iter().copied())
    }

    #[test]
    fn a_websockets_subprotocol_port_wins_over_the_header_and_only_for_websockets() {
        let sub = o(&[
            "chat, lambda-microvms.port.5432",
            "lambda-microvms.authentication.t",
        ]);
        assert_eq!(
            sub,
            [
                "chat",
                "lambda-microvms.port.5432",
                "lambda-microvms.authentication.t"
            ]
        );
        assert_eq!(target_port(Some(Some("8080")), true, &sub), Ok(5432));
        assert_eq!(target_port(Some(Some("8080")), false, &sub), Ok(8080));
        assert_eq!(target_port(None, false, &sub), Ok(8080));
        assert_eq!(target_port(None, true, &o(&["chat"])), Ok(8080));
        assert_eq!(target_port(Some(Some(" 9000 ")), false, &[]), Ok(9000));
        for bad in ["0", "65536", "x", ""] {
            assert!(target_port(Some(Some(bad)), false, &[]).is_err(), "{bad}");
        }
        assert!(target_port(Some(None), false, &[]).is_err());
        assert!(target_port(None, true, &o(&["lambda-microvms.port.0"])).is_err());
    }

    #[test]
    fn platform_subprotocols_and_force_h2() {
        for p in [
            "lambda-microvms",
            "lambda-microvms.authentication.x",
            "lambda-microvms.port.1",
        ] {
            assert!(is_platform_subprotocol(p), "{p}");
        }
        for p in ["chat", "lambda-microvms.shell.x", "lambda-microvmsx"] {
            assert!(!is_platform_subprotocol(p), "{p}");
        }
        assert!(force_h2(Some("true")) && force_h2(Some(" TRUE")));
        assert!(!force_h2(Some("1")) && !force_h2(Some("false")) && !force_h2(None));
    }
}
