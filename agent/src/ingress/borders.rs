//! What ingress must never reach: the application's lifecycle hooks (on any port: an
//! application may mount them on its main server) and the ports the agent itself uses
//! in the guest. A client of the MicroVM's endpoint must not forge a `/run` or a
//! `/terminate`, nor hold a keep-awake lease that keeps the VM from ever going idle.

use microvm_protocol::ports::{DEFAULT_APP, LEASE};

/// The ports ingress refuses, decided once from the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borders {
    refused_ports: Vec<u16>,
    /// Whether byte streams (h2c, raw TCP) to the default port could reach the hooks,
    /// which a stream cannot be checked for.
    streams_refused: bool,
}

impl Borders {
    /// `hooks_port`: the image's `hooks.port` when the image enables a hook (an image
    /// without hooks may serve anything there). It is refused unless it is also the
    /// default application port, where requests are still checked path by path.
    pub fn new(hooks_port: Option<u16>) -> Self {
        let mut refused_ports = vec![LEASE];
        if let Some(p) = hooks_port.filter(|p| *p != DEFAULT_APP) {
            refused_ports.push(p);
        }
        Borders {
            refused_ports,
            streams_refused: hooks_port == Some(DEFAULT_APP),
        }
    }

    /// Why a request for `path` on `port` may not pass, if it may not.
    pub fn refusal(&self, path: &str, port: u16) -> Option<String> {
        if is_hook_path(path) {
            return Some(format!(
                "{path}: the lifecycle hooks are the platform's to call, not reachable through the MicroVM's endpoint"
            ));
        }
        if self.refused_ports.contains(&port) {
            return Some(format!(
                "port {port} is used by the MicroVM's agent and is not reachable through its endpoint"
            ));
        }
        None
    }

    /// Why a byte stream to the default port may not pass, if it may not.
    pub fn stream_refusal(&self) -> Option<String> {
        self.streams_refused.then(|| {
            format!("port {DEFAULT_APP} serves the lifecycle hooks: byte streams cannot be checked and are refused")
        })
    }
}

/// Any spelling of a hook path: the path as a server inside the guest may normalise
/// it (percent-escapes decoded, repeatedly; backslashes as slashes; `;parameters`,
/// empty and `.` segments dropped; `..` resolved; case ignored) contains the
/// segments `aws/lambda-microvms/runtime`.
fn is_hook_path(path: &str) -> bool {
    let mut decoded = path.to_string();
    // Double (and deeper) encoding: decode until nothing changes, a few rounds at most.
    for _ in 0..4 {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let decoded = decoded.to_ascii_lowercase().replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    segments
        .windows(3)
        .any(|w| w == ["aws", "lambda-microvms", "runtime"])
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_paths_are_refused_in_every_spelling_on_every_port() {
        let b = Borders::new(Some(9000));
        for path in [
            "/aws/lambda-microvms/runtime/v1/run",
            "/aws/lambda-microvms/runtime/v1/terminate?x=1",
            "//aws//lambda-microvms/runtime/v1/run",
            "/AWS/Lambda-MicroVMs/Runtime/v1/run",
            "/%61ws/lambda-microvms%2Fruntime/v1/run",
            "/app/../aws/lambda-microvms/runtime/v1/suspend",
            "/aws/./lambda-microvms/runtime/v1/terminate",
            "/aws/x/../lambda-microvms/runtime/v1/run",
            "/aws/%2e/lambda-microvms/runtime/v1/run",
            "/aws;x/lambda-microvms/runtime/v1/run",
            "/aws\\lambda-microvms\\runtime/v1/run",
            "/aws%252Flambda-microvms%252Fruntime/v1/run",
            "http://mvm.example/aws/lambda-microvms/runtime/v1/run",
        ] {
            for port in [8080, 8081, 3000] {
                assert!(b.refusal(path, port).is_some(), "{path} on {port}");
            }
        }
        for path in [
            "/",
            "/aws/other",
            "/lambda-microvms",
            "/runtime/v1/run",
            "/docs/aws-lambda-microvms-runtime",
            "/aws/lambda-microvms/../../runtime",
        ] {
            assert_eq!(b.refusal(path, 8080), None, "{path}");
        }
    }

    #[test]
    fn the_agents_ports_are_refused() {
        let b = Borders::new(Some(9000));
        assert!(b.refusal("/", 9000).is_some());
        assert!(b.refusal("/", LEASE).is_some());
        assert_eq!(b.refusal("/", 8080), None);
        assert_eq!(b.stream_refusal(), None);
        // Hooks on the main server: the port stays open, checked path by path, and
        // streams to it (which cannot be checked) are refused.
        let shared = Borders::new(Some(DEFAULT_APP));
        assert_eq!(shared.refusal("/", DEFAULT_APP), None);
        assert!(shared
            .refusal("/aws/lambda-microvms/runtime/v1/run", DEFAULT_APP)
            .is_some());
        assert!(shared.stream_refusal().is_some());
        // No valid image config: only the agent's own ports.
        assert!(Borders::new(None).refusal("/", LEASE).is_some());
    }
}
