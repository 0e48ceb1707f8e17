//! Events from the agent to the host, and the announce line.
//!
//! Wire form: `GET /v1/events?after=N&waitSeconds=W` answers an [`EventsPage`] with
//! every event whose `seq > N`, waiting up to W seconds (at most
//! [`EVENTS_MAX_WAIT_SECONDS`](crate::limits::EVENTS_MAX_WAIT_SECONDS)) for one to
//! exist. Sequence numbers start at 1 and never repeat; the host keeps the highest it
//! has seen and asks again with it, so a reconnect replays exactly what it missed.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    /// No activity for `maxIdleMs` (fields `idleForMs`, `maxIdleMs`).
    Idle,
    /// Activity again after `idle`.
    Active,
    /// The application exited and the VM ends with it (`stateReason`, `exit`).
    ApplicationExited,
    /// A hook call failed (`hook`, `outcome`).
    HookFailed,
    /// The kernel's OOM killer struck the application's cgroup (`oomKills`, the
    /// total so far; `memoryLimitMiB` when the image sets one).
    ApplicationOutOfMemory,
    /// The credentials expire within 20 minutes (`expiration`, `accessKeyId`): the
    /// host should rotate them (`POST /v1/credentials`) before the SDKs, which
    /// refresh 15 minutes ahead, find them stale.
    CredentialsExpiring,
}

/// One event: the common fields plus the type's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub uptime_ms: u64,
    pub unix_time_ms: u64,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The answer of `GET /v1/events`. `gap` is true when events after `after` were
/// already discarded: the page then starts with the oldest kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub last_seq: u64,
    pub gap: bool,
}

/// The line the agent sends once to the host's announce port when its control
/// channel is ready; the host connects only after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announce {
    /// Always `"ready"`.
    pub event: String,
    pub cid: Option<u32>,
    /// Where the control channel listens, as `vsock:PORT`.
    pub control: String,
    pub protocol_version: u32,
    pub agent_version: String,
}
