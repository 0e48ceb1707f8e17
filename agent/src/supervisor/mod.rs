//! The application: one reaper that owns waitpid(2), the process and its exit policy,
//! its cgroup and memory, and the signals passed on to it.

pub mod cgroup;
pub mod privileges;
pub mod process;
pub mod reaper;
pub mod seccomp;
pub mod signals;

pub use process::{state_reason, AppSpec, Supervisor};
pub use reaper::Reaper;
