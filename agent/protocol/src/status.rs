//! What `GET /v1/status` answers, and what a hook call did. The agent builds these;
//! host tools read them.

use crate::hook::Hook;
use crate::run::{IdlePolicy, Logging};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The lifecycle state the host sees. `SUSPENDING` and `TERMINATING` are an operation
/// in flight; the others are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Pending,
    Running,
    Suspending,
    Suspended,
    Terminating,
    Terminated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Running => "RUNNING",
            State::Suspending => "SUSPENDING",
            State::Suspended => "SUSPENDED",
            State::Terminating => "TERMINATING",
            State::Terminated => "TERMINATED",
        }
    }
}

/// What the agent is to the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// PID 1 of a real guest: the machine is ours.
    Guest,
    /// PID 1 of a child PID namespace: power-off is real (the kernel kills the
    /// namespace), the clock and entropy pool belong to someone else.
    Namespace,
    /// Not PID 1 at all: a subreaper under another init.
    Process,
}

impl Role {
    pub fn is_pid1(self) -> bool {
        self != Role::Process
    }
}

/// How a process ended: `{"code": N}` or `{"signal": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// What the application did with a hook call (`result` names the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum HookOutcome {
    /// 2xx.
    #[serde(rename_all = "camelCase")]
    Ok { application_status: u16 },
    /// 503 from `/ready` or `/validate`: not yet, the host polls again.
    NotReady,
    /// Any other status.
    #[serde(rename_all = "camelCase")]
    Failed {
        application_status: u16,
        application_body: String,
    },
    /// Could not connect, or the connection broke before an answer.
    Unreachable { error: String },
    /// No answer within the hook's timeout.
    #[serde(rename_all = "camelCase")]
    Timeout { timeout_ms: u64 },
    /// The image leaves this hook DISABLED: the application was not called.
    Disabled,
}

impl HookOutcome {
    /// The control channel's status for a hook answer with this outcome.
    pub fn http_status(&self) -> u16 {
        match self {
            HookOutcome::Ok { .. } | HookOutcome::Disabled => 200,
            HookOutcome::NotReady => 503,
            HookOutcome::Failed { .. } | HookOutcome::Unreachable { .. } => 502,
            HookOutcome::Timeout { .. } => 504,
        }
    }

    /// Whether the hook did what it was asked (or said "not yet", which is no fault).
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            HookOutcome::Ok { .. } | HookOutcome::NotReady | HookOutcome::Disabled
        )
    }
}

/// The answer to a lifecycle request (`/ready`, `/validate`, `/run`, `/suspend`,
/// `/resume`): which hook, what the application did, and the state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookAnswer {
    pub hook: Hook,
    #[serde(flatten)]
    pub outcome: HookOutcome,
    /// `/run`: the MicroVM that runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microvm_id: Option<String>,
    /// `/suspend`: whether everything the application wrote before it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_flushed: Option<bool>,
    /// The state once the request settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// `/suspend`: where its time went, so the host can tell the application's part
    /// from the guest's own (a sync of a busy disk can dwarf the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<SuspendTimings>,
    /// `/suspend`: exec sessions and transfers it ended (a snapshot would cut them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_sessions_ended: Option<u64>,
}

/// Milliseconds (fractional) of each step of a `/suspend`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuspendTimings {
    /// The application's `/suspend` hook, through its answer.
    pub application_ms: f64,
    /// Sending (or dropping) what the application had written, and holding the rest.
    pub logs_flush_ms: f64,
    /// `sync(2)` of the guest's filesystems.
    pub storage_sync_ms: f64,
}

/// The answer to `/terminate` (always 200: the application cannot stop it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateAnswer {
    /// The application's `/terminate` hook, when it was running to be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookAnswer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_exit: Option<Exit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_flushed: Option<bool>,
    /// The final sync or read-only remount failed (the power goes off regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// Exec sessions and transfers the termination ended.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exec_sessions_ended: u64,
    pub state_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The application as the host sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub pid: Option<i32>,
    pub running: bool,
    pub starts: u32,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub state_reason: Option<String>,
    pub spawn_error: Option<String>,
    /// When restarting, how long the current backoff is.
    pub restart_backoff_ms: Option<u64>,
    #[serde(default)]
    pub orphans_reaped: u64,
    /// OOM kills the kernel counted in the application's cgroup (a real guest).
    #[serde(default)]
    pub oom_kills: u64,
    /// Who the application runs as and what it may do (PID 1 only: elsewhere it has
    /// the agent's own privileges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<AppPrivileges>,
}

/// The application's identity and capabilities as the agent set them at its start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPrivileges {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group first), empty for the default root.
    pub groups: Vec<u32>,
    /// What it holds after exec (`CAP_CHOWN`, ...): for root its bounding set, for
    /// another user nothing, or its ambient set under `["ALL"]`.
    pub capabilities: Vec<String>,
    /// The bounding set: the most it or any program it starts can ever hold.
    pub bounding_set: Vec<String>,
    pub no_new_privs: bool,
    /// Mounts it sees read-only in its own mount namespace.
    pub read_only: Vec<String>,
}

/// Per hook: how often the application was called and how the last call went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    pub calls: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<HookOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<u64>,
    pub disabled: bool,
}

/// The run as the host asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub microvm_id: String,
    pub region: Option<String>,
    pub logging: Option<Logging>,
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration_in_seconds: Option<u64>,
    /// What the run's `network` configured (`eth0 10.0.2.15/24 via 10.0.2.2 ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Exec and files are allowed (the run's shell ingress).
    #[serde(default)]
    pub shell_ingress: bool,
}

/// Credentials without their secrets: secrets never appear in status or logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsInfo {
    pub access_key_id: String,
    pub expiration: Option<String>,
}

/// Where application log events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Destination {
    /// Before /run: the destination is not known yet; events wait in the buffer.
    Pending,
    /// `{"disabled":{}}`: dropped, counted.
    Disabled,
    /// No execution role: nothing can leave, so nothing is kept (as on the platform).
    NoCredentials,
    #[serde(rename_all = "camelCase")]
    CloudWatch {
        log_group: String,
        log_stream: String,
        region: String,
        /// The run's endpoint override, if any (else the SDK's endpoint variables,
        /// else the public endpoint).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
}

/// What a full log buffer does to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum WhenFull {
    /// The application's write blocks until there is room: nothing is lost.
    #[default]
    Block,
    /// The oldest buffered events make room, counted as dropped.
    DropOldest,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogCounters {
    pub captured_events: u64,
    pub captured_bytes: u64,
    pub sent_events: u64,
    pub sent_bytes: u64,
    pub sent_batches: u64,
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    pub retries: u64,
    pub empty_lines_skipped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsStatus {
    pub destination: Destination,
    pub counters: LogCounters,
    pub buffered_events: usize,
    /// Memory the queued events take, counted against `buffer_limit_bytes`.
    pub buffered_bytes: usize,
    /// Message bytes of the buffered events (the batch in flight included):
    /// `captured_bytes = sent_bytes + dropped_bytes + buffered_message_bytes`.
    #[serde(default)]
    pub buffered_message_bytes: u64,
    pub buffer_limit_bytes: usize,
    pub when_full: WhenFull,
    pub last_error: Option<String>,
    pub why: Option<String>,
}

/// Clock, entropy and storage steps, as applied (real guest) or recorded (tests).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineSteps {
    pub applied: bool,
    pub clock_steps: u32,
    pub last_clock_unix_nanos: Option<u64>,
    pub entropy_reseeds: u32,
    pub last_entropy_bytes: Option<usize>,
    pub storage_syncs: u32,
    pub remounted_read_only: bool,
}

/// What PID 1's boot did.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootReport {
    pub mounted: Vec<String>,
    /// What boot had to make: the console, `/dev` links.
    #[serde(default)]
    pub created: Vec<String>,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityStatus {
    pub ingress_bytes: u64,
    pub busy: bool,
    pub idle_for_ms: u64,
    /// Exec sessions and file transfers in progress (each keeps the VM busy).
    #[serde(default)]
    pub exec_sessions: u64,
}

/// `metadata` in the image config, mirroring EC2's `MetadataOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetadataOptions {
    #[serde(default)]
    pub http_endpoint: HttpEndpoint,
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// Accepted (1-64) and reported. On EC2 it is the IP TTL of the token answer, so
    /// a container behind a forwarding hop cannot fetch a token; a service in the
    /// guest's own kernel is reached with no hop, so it changes nothing here.
    #[serde(default = "default_hop_limit")]
    pub http_put_response_hop_limit: u8,
}

fn default_hop_limit() -> u8 {
    1
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_endpoint: HttpEndpoint::Enabled,
            http_tokens: HttpTokens::Required,
            http_put_response_hop_limit: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpEndpoint {
    #[default]
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    #[default]
    Required,
    Optional,
}

/// The metadata service as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataStatus {
    /// `http://169.254.169.254` when serving; None when not (and `why` says so).
    pub endpoint: Option<String>,
    pub options: MetadataOptions,
    pub tokens_issued: u64,
    pub requests: u64,
    pub why: Option<String>,
}

/// The agent's console writer: what it wrote, and what it dropped because the console
/// (a serial port, a pipe) could not keep up or failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleStatus {
    pub written_lines: u64,
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
}

/// Facts only a real guest has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestInfo {
    /// The kernel's machine name (`uname -m`: `x86_64`, `aarch64`).
    pub machine: Option<String>,
    pub cid: Option<u32>,
    pub mem_total_ki_b: Option<u64>,
    pub mem_available_ki_b: Option<u64>,
    /// Announce lines the host received: 1 after a boot, one more after each time the
    /// vsock device came back (a snapshot restore). Absent from agents before it.
    #[serde(default)]
    pub announcements: u32,
    /// The guest's wall clock when it answered (ms since the epoch): after a restore
    /// it is behind by the time on disk until `/run` or `/resume` sets it.
    #[serde(default)]
    pub unix_time_ms: Option<i64>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub protocol_version: u32,
    pub agent_version: String,
    pub state: State,
    pub in_flight: Option<Hook>,
    pub state_reason: Option<String>,
    pub image_name: Option<String>,
    pub config_error: Option<String>,
    pub microvm_id: Option<String>,
    pub run: Option<RunInfo>,
    pub credentials: Option<CredentialsInfo>,
    pub application: Option<AppStatus>,
    pub hooks: BTreeMap<Hook, HookRecord>,
    pub logs: Option<LogsStatus>,
    pub activity: ActivityStatus,
    pub machine: MachineSteps,
    pub role: Role,
    pub guest: Option<GuestInfo>,
    pub boot: BootReport,
    pub console: ConsoleStatus,
    pub metadata: Option<MetadataStatus>,
    pub uptime_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_wire_form() {
        let v = serde_json::to_value(HookOutcome::Failed {
            application_status: 500,
            application_body: "x".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"result":"failed","applicationStatus":500,"applicationBody":"x"})
        );
        let v = serde_json::to_value(HookOutcome::Timeout { timeout_ms: 1000 }).unwrap();
        assert_eq!(v, serde_json::json!({"result":"timeout","timeoutMs":1000}));
        assert_eq!(HookOutcome::NotReady.http_status(), 503);
        assert!(!HookOutcome::NotReady.is_fault());
    }

    #[test]
    fn hook_answers_flatten_the_outcome() {
        let a = HookAnswer {
            hook: Hook::Run,
            outcome: HookOutcome::Ok {
                application_status: 200,
            },
            microvm_id: Some("m".into()),
            logs_flushed: None,
            state: Some(State::Running),
            timings: None,
            exec_sessions_ended: None,
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"hook":"run","result":"ok","applicationStatus":200,
                               "microvmId":"m","state":"RUNNING"})
        );
        assert_eq!(serde_json::from_value::<HookAnswer>(v).unwrap(), a);
        let d = serde_json::json!({"hook":"suspend","result":"disabled"});
        let d: HookAnswer = serde_json::from_value(d).unwrap();
        assert_eq!(
            (d.outcome.http_status(), d.outcome.is_fault()),
            (200, false)
        );
    }

    #[test]
    fn hooks_map_keys_are_names() {
        let mut m = BTreeMap::new();
        m.insert(Hook::Run, HookRecord::default());
        let v = serde_json::to_value(&m).unwrap();
        assert!(v.get("run").is_some(), "{v}");
    }
}
