//! `run-microvm` parameters, the AWS CLI way: `--cli-input-json` first, then command
//! line options override it; JSON or shorthand syntax for structures; the API's
//! constraints checked with the CLI's wording ("Parameter validation failed:").

use crate::{shorthand, validate};
use microvm_protocol::run::RunEnvelope;
use serde_json::{json, Map, Value};

/// Usage line shown with operation errors.
pub const USAGE: &str = "usage: microvm-local run-microvm --image-identifier PATH [options]\n       microvm-local run-microvm --generate-cli-skeleton [input|output]\n       microvm-local exec --microvm-identifier ID [options] -- COMMAND [ARG...]\n       microvm-local shell --microvm-identifier ID [options] [COMMAND [ARG...]]\n       microvm-local exec|shell --endpoint-url URL --auth-token TOKEN [options] ...\n       microvm-local cp SRC DEST   (one of them MICROVM_ID:/absolute/path)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Command-line usage (exit 252, like `aws: error: ...`).
    Usage(String),
    /// No or an unknown operation: the usage, then the error (exit 252).
    Operation(String),
    /// Failed the API's constraints (exit 255, `Parameter validation failed:`).
    Validation(Vec<String>),
    /// Asked for help or the version: the text goes to stdout (exit 0).
    Info(String),
    /// What the service would refuse (exit 254, as the CLI prints a service error):
    /// the error's type and message.
    Service(&'static str, String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "aws: error: {m}"),
            CliError::Operation(m) => write!(f, "{USAGE}\naws: error: {m}"),
            CliError::Validation(v) => {
                write!(f, "\nParameter validation failed:\n{}", v.join("\n"))
            }
            CliError::Info(text) => f.write_str(text.trim_end()),
            CliError::Service(kind, m) => write!(
                f,
                "\nAn error occurred ({kind}) when calling the RunMicrovm operation: {m}"
            ),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Info(_) => 0,
            CliError::Usage(_) | CliError::Operation(_) => 252,
            CliError::Validation(_) => 255,
            CliError::Service(..) => 254,
        }
    }
}

/// What the runner was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Run(Box<RunArgs>),
    /// `--generate-cli-skeleton input|output`: print it, nothing else.
    Skeleton(String),
    /// `snapshot-image --image-identifier DIR`: the image-build phase and its
    /// snapshot (local only; the platform does it when it builds an image version).
    Snapshot(std::path::PathBuf),
    /// `exec` or `shell` against a running MicroVM.
    Exec(Box<crate::attach::ExecArgs>),
    /// `cp` into or out of a running MicroVM.
    Cp(crate::cp::CpArgs),
    /// `serve`: the local endpoint.
    Serve(Box<crate::serve::ServeArgs>),
}

/// A validated `run-microvm`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunArgs {
    /// The parameters in API form, as given: they are echoed in the output.
    pub request: Map<String, Value>,
    /// What `/run` carries from them; the host adds id, clock, entropy and region.
    pub envelope: RunEnvelope,
    pub then: Vec<String>,
    pub interactive: bool,
    pub timeout_s: u64,
    pub warnings: Vec<String>,
    /// Host TCP port of the MicroVM's endpoint (0: any free port).
    pub endpoint_port: u16,
    /// Test-only: lowers the agent's 60 s minimum idle duration.
    pub test_min_idle_seconds: Option<u64>,
    /// `--forward`: guest port on 10.0.2.100 -> an address on this machine.
    pub forwards: Vec<(u16, std::net::SocketAddr)>,
    /// `--logs-endpoint`, for the run envelope.
    pub logs_endpoint: Option<String>,
    /// Lifetime of generated role credentials.
    pub credentials_lifetime_s: u64,
    /// `--cold-boot`: boot the kernel even when the image has a snapshot.
    pub cold_boot: bool,
    /// `serve`'s runners: the endpoint on a Unix socket, the id, errors as JSON.
    pub endpoint_socket: Option<std::path::PathBuf>,
    pub microvm_id: Option<String>,
    pub json_errors: bool,
}

/// `GUEST_PORT=HOST:PORT` of `--forward`.
pub fn forward(v: &str) -> Result<(u16, std::net::SocketAddr), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "aws: error: argument --forward: expected GUEST_PORT=HOST:PORT (e.g. 4566=127.0.0.1:4566), got {v:?}"
        ))
    };
    let (port, to) = v.split_once('=').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    use std::net::ToSocketAddrs;
    let to = to
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(bad)?;
    Ok((port, to))
}

/// `file://path` reads the file, like the CLI; anything else is the value itself.
pub fn load(value: &str) -> Result<String, CliError> {
    match value.strip_prefix("file://") {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::Usage(format!("Unable to load paramfile {value}: {e}"))),
        None => Ok(value.to_string()),
    }
}

/// A structure option: JSON if it looks like JSON, else shorthand.
pub fn structure(flag: &str, value: &str) -> Result<Value, CliError> {
    let text = load(value)?;
    let t = text.trim_start();
    if t.starts_with('{') {
        serde_json::from_str(t).map_err(|e| {
            CliError::Usage(format!(
                "Error parsing parameter '{flag}': Invalid JSON: {e}\nJSON received: {text}"
            ))
        })
    } else {
        shorthand::parse(t).map_err(|e| {
            CliError::Usage(format!(
                "Error parsing parameter '{flag}': {e} for input:\n{text}"
            ))
        })
    }
}

/// `--cli-input-json` (text or `file://`), the base the options override.
pub fn cli_input(value: &str) -> Result<Map<String, Value>, CliError> {
    let text = load(value)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(CliError::Usage(format!(
            "Error parsing parameter 'cli-input-json': Invalid JSON received: {text}"
        ))),
    }
}

/// Validate the merged request and take what `/run` needs from it.
pub fn finish(mut args: RunArgs) -> Result<RunArgs, CliError> {
    let min_idle = args
        .test_min_idle_seconds
        .unwrap_or(microvm_protocol::limits::MIN_IDLE_SECONDS);
    args.warnings =
        validate::validate_with(&args.request, min_idle).map_err(CliError::Validation)?;
    // The one-shot runner plays the service too: it refuses what the service would.
    validate::service_limits(&args.request)
        .map_err(|m| CliError::Service("ValidationException", m))?;
    args.envelope = envelope(&args.request).map_err(CliError::Validation)?;
    Ok(args)
}

/// The parameters' part of the `/run` envelope. Validation has checked every
/// member's type and range already; an error here means the two disagree.
pub fn envelope(r: &Map<String, Value>) -> Result<RunEnvelope, Vec<String>> {
    let mut part = Map::new();
    for k in [
        "runHookPayload",
        "logging",
        "idlePolicy",
        "maximumDurationInSeconds",
    ] {
        if let Some(v) = r.get(k) {
            part.insert(k.to_string(), v.clone());
        }
    }
    let mut e: RunEnvelope =
        serde_json::from_value(Value::Object(part)).map_err(|e| vec![e.to_string()])?;
    e.shell_ingress = shell_ingress(r);
    Ok(e)
}

/// Whether `ingressNetworkConnectors` lets the host exec into the MicroVM and copy
/// files (SHELL_INGRESS or ALL_INGRESS, by name or ARN).
pub fn shell_ingress(r: &Map<String, Value>) -> bool {
    use microvm_protocol::connectors::{managed, Managed};
    r.get("ingressNetworkConnectors")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter().filter_map(Value::as_str).any(|c| {
                matches!(
                    managed(c),
                    Some(Managed::ShellIngress) | Some(Managed::AllIngress)
                )
            })
        })
}

/// `--generate-cli-skeleton input|output`.
pub fn skeleton(kind: &str) -> Value {
    if kind == "output" {
        return json!({
            "microvmId": "", "imageArn": "", "state": "PENDING", "stateReason": "",
            "endpoint": "", "executionRoleArn": "",
            "idlePolicy": {"maxIdleDurationSeconds": 0, "suspendedDurationSeconds": 0, "autoResumeEnabled": true},
            "maximumDurationInSeconds": 0, "startedAt": "",
            "ingressNetworkConnectors": [""], "egressNetworkConnectors": [""]
        });
    }
    json!({
        "ingressNetworkConnectors": [""],
        "egressNetworkConnectors": [""],
        "imageIdentifier": "",
        "imageVersion": "",
        "executionRoleArn": "",
        "idlePolicy": {"maxIdleDurationSeconds": 0, "suspendedDurationSeconds": 0, "autoResumeEnabled": true},
        "logging": {"disabled": {}, "cloudWatch": {"logGroup": "", "logStream": ""}},
        "runHookPayload": "",
        "maximumDurationInSeconds": 0,
        "clientToken": ""
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::run::{IdlePolicy, Logging};

    #[test]
    fn the_envelope_carries_the_typed_parameters() {
        let r = json!({"imageIdentifier": "i", "runHookPayload": "p",
            "logging": {"disabled": {}}, "maximumDurationInSeconds": 60,
            "idlePolicy": {"maxIdleDurationSeconds": 900, "autoResumeEnabled": true},
            "clientToken": "t"});
        let e = envelope(r.as_object().unwrap()).unwrap();
        assert_eq!(e.run_hook_payload, "p");
        assert!(matches!(e.logging, Some(Logging::Disabled(_))));
        assert_eq!(e.maximum_duration_in_seconds, Some(60));
        assert_eq!(
            e.idle_policy,
            Some(IdlePolicy {
                max_idle_duration_seconds: 900,
                suspended_duration_seconds: 0,
                auto_resume_enabled: true
            })
        );
        assert_eq!(e.microvm_id, None);
        assert!(!e.shell_ingress);
    }

    #[test]
    fn shell_or_all_ingress_enables_exec() {
        for (list, on) in [
            (json!(["SHELL_INGRESS"]), true),
            (json!(["HTTP_INGRESS", "ALL_INGRESS"]), true),
            (
                json!([
                    "arn:aws:lambda:us-east-1:123456789012:aws-network-connector:SHELL_INGRESS"
                ]),
                true,
            ),
            (json!(["HTTP_INGRESS"]), false),
            (json!(["shell_ingress"]), false),
        ] {
            let r = json!({"imageIdentifier": "i", "ingressNetworkConnectors": list});
            let e = envelope(r.as_object().unwrap()).unwrap();
            assert_eq!(e.shell_ingress, on, "{list}");
        }
    }

    #[test]
    fn skeleton_members() {
        assert_eq!(
            skeleton("input").as_object().unwrap().len(),
            validate::MEMBERS.len()
        );
        assert!(skeleton("output").get("microvmId").is_some());
    }
}
