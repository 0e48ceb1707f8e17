//! HTTP helpers shared by the agent's servers (control channel and ingress).
//!
//! Draining a refused request's body is the same rule for the agent's servers and for
//! an application's hooks server, so it is written once, in hook-sdk, and used here.

pub use hook_sdk::{drain, DRAIN_LIMIT};
