//! The wire contract of microvm-agent, defined once.
//!
//! Everything two parties must agree on lives here: the agent (PID 1 in the guest),
//! `hook-sdk` (the application's side of the hooks), and the host tools (the local
//! runner, the test harness). A constant or type that crosses a process boundary is
//! declared in this crate and nowhere else.
//!
//! - [`hook`]: the Lambda MicroVMs Application Hook Interface (names, paths, bodies).
//! - [`run`]: what the host sends on the control channel (`/run`, `/resume`).
//! - [`status`]: what `GET /v1/status` answers, and hook outcomes.
//! - [`events`]: `GET /v1/events` and the announce line.
//! - [`exec`]: exec sessions and file transfer (shell ingress).
//! - [`ingress`]: the platform's ingress headers and subprotocols (target port).
//! - [`error`]: the control channel's error answers and their codes.

pub mod connectors;
pub mod error;
pub mod events;
pub mod exec;
pub mod hook;
pub mod ingress;
pub mod run;
pub mod status;

pub use error::{ApiError, ErrorCode};
pub use hook::{Hook, RunHookBody, HOOK_PATH_PREFIX};

/// Version of this contract. It is in the announce line and in `/v1/status`:
/// snapshots freeze agents of old versions into images, and a host must know which
/// contract the agent that answers speaks. Bump it on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Ports: vsock ports in the guest for the host's links, TCP ports on the guest's
/// loopback for the application.
pub mod ports {
    /// The host's only allowed vsock peer.
    pub const HOST_CID: u32 = 2;
    /// Guest vsock port of the control channel.
    pub const CONTROL: u32 = 9000;
    /// Guest vsock port where the host forwards ingress connections.
    pub const INGRESS: u32 = 9080;
    /// Guest loopback TCP port of keep-awake leases.
    pub const LEASE: u16 = 9001;
    /// The application's hooks port unless the image config says otherwise.
    pub const DEFAULT_HOOKS: u16 = 9000;
    /// The application port ingress goes to unless `X-aws-proxy-port` names another.
    pub const DEFAULT_APP: u16 = 8080;
}

/// Limits of the contract.
pub mod limits {
    /// Largest `runHookPayload`, in UTF-8 bytes (the platform's documented limit).
    pub const MAX_RUN_HOOK_PAYLOAD: usize = 16_384;
    /// The API schema's `runHookPayload` limit; above it the CLI warns.
    pub const RUN_HOOK_PAYLOAD_SCHEMA_MAX: usize = 4_096;
    /// RunMicrovm's range for `maximumDurationInSeconds` (8 hours).
    pub const MAX_DURATION_SECONDS: u64 = 28_800;
    /// The platform's lower bound for `idlePolicy.maxIdleDurationSeconds`.
    pub const MIN_IDLE_SECONDS: u64 = 60;
    /// Longest `microvmId`.
    pub const MAX_MICROVM_ID: usize = 128;
    /// Smallest host entropy contribution that is worth a reseed.
    pub const MIN_ENTROPY_BYTES: usize = 32;
    /// Largest control-channel request body: a maximal payload JSON-escaped six-fold,
    /// plus the envelope.
    pub const MAX_CONTROL_BODY: usize = 256 * 1024;
    /// Runtime hook timeouts (run, resume, suspend, terminate), seconds.
    pub const RUNTIME_HOOK_TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=60;
    /// Image-build hook timeouts (ready, validate), seconds.
    pub const IMAGE_BUILD_HOOK_TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;
    /// Events the agent keeps for replay.
    pub const EVENTS_RETAINED: usize = 4096;
    /// Longest `waitSeconds` of `GET /v1/events`.
    pub const EVENTS_MAX_WAIT_SECONDS: u64 = 60;
    /// The agent's `credentialsExpiring` comes this long before the expiration.
    pub const CREDENTIALS_WARNING_SECONDS: u64 = 20 * 60;
    /// The guest memory an image's `resources[0].minimumMemoryInMiB` may ask for
    /// (checked by the agent's image config and by the runner reading the manifest).
    pub const MINIMUM_MEMORY_MIB: std::ops::RangeInclusive<u32> = 64..=(1 << 20);
}

/// The log group of a run whose `logging` names none: this prefix and the image name.
pub const DEFAULT_LOG_GROUP_PREFIX: &str = "/aws/lambda-microvms/";

/// Control-channel paths besides the hook paths.
pub mod paths {
    pub const STATUS: &str = "/v1/status";
    pub const EVENTS: &str = "/v1/events";
    /// `POST` new credentials (the `/run` envelope's `credentials` object).
    pub const CREDENTIALS: &str = "/v1/credentials";
    /// `POST`, upgraded to exec frames (see [`exec`](crate::exec)).
    pub const EXEC: &str = "/v1/exec";
    /// `GET`, `HEAD` and `PUT` of tar streams (see [`exec`](crate::exec)).
    pub const FILES: &str = "/v1/files";
}
