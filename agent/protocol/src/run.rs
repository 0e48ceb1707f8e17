//! What the host sends on the control channel: the `/run` envelope (a superset of the
//! application's `/run` body) and `/resume`. Strict: unknown fields are errors.

use serde::{Deserialize, Serialize};

/// Where the application's stdout and stderr go: the AWS `Logging` union.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Logging {
    Disabled(Empty),
    CloudWatch(CloudWatchLogging),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudWatchLogging {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<String>,
}

/// `idlePolicy` of run-microvm.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdlePolicy {
    pub max_idle_duration_seconds: u64,
    #[serde(default)]
    pub suspended_duration_seconds: u64,
    #[serde(default)]
    pub auto_resume_enabled: bool,
}

/// Temporary execution-role credentials handed to the guest by the host.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The host's wall clock, to step a guest that may be a restored snapshot.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clock {
    pub unix_time_nanos: u64,
}

/// The host's `/run` body as it is on the wire (the agent validates it further).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunEnvelope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microvm_id: Option<String>,
    #[serde(default)]
    pub run_hook_payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_policy: Option<IdlePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_duration_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The guest's NIC for this run, for a host whose guest network differs per run
    /// (a snapshot froze the kernel command line and its `microvm.*` parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Service endpoints for this run, in place of the public ones: per run, never on
    /// the kernel command line (a snapshot freezes that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// Base64 (standard alphabet, padded), at least
    /// [`MIN_ENTROPY_BYTES`](crate::limits::MIN_ENTROPY_BYTES) once decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
    /// The run has shell ingress (the `SHELL_INGRESS` or `ALL_INGRESS` connector):
    /// exec and files on the control channel are allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shell_ingress: bool,
    /// Test only: lowers the agent's minimum idle duration for this run (in the
    /// envelope, not on the kernel command line, which a snapshot freezes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_min_idle_seconds: Option<u64>,
}

/// The run envelope's `network`: what the `microvm.ip`, `microvm.gateway`,
/// `microvm.mtu`, `microvm.dns` and `microvm.iface` kernel parameters say.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// `ADDRESS/PREFIX` (IPv4).
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The interface; the first one besides `lo` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// Endpoint overrides in the run envelope (`http://` or `https://` URLs).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    /// CloudWatch Logs, for the agent's own log delivery (what
    /// `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS` is to an SDK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// The host's `/resume` body; every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResumeEnvelope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
}
