//! microvm-agent: PID 1 of a MicroVM guest, as a library with a thin binary on top.
//! See DESIGN.md and README.md; the README's layout section maps concerns to files.
//!
//! - [`sys`]: the machine (boot duties, kernel command line, modules, clock/entropy/
//!   storage behind [`sys::machine::Machine`], power-off);
//! - [`supervisor`]: the application process, the reaper, signals;
//! - [`control`]: the host's control channel (routes, state machine, lifecycle);
//! - [`hooks`]: delivery of hooks to the application;
//! - [`logs`]: the application's output to CloudWatch Logs or nowhere;
//! - [`ingress`], [`activity`], [`events`]: traffic, idleness and what the host hears;
//! - [`metadata`], [`sdkconfig`]: what the application's AWS SDK finds (IMDSv2, region);
//! - [`config`]: the image config and the host's request bodies;
//! - [`transport`]: vsock or Unix listeners for the host's links;
//! - [`console`]: the console, written off the runtime thread, never waited for;
//! - [`panic`]: a panic anywhere ends in an orderly, bounded power-off;
//! - [`fdbudget`]: the descriptor table shared out so strangers cannot starve the host;
//! - [`faults`]: faults on demand, only in the test suites' build;
//! - [`agent`]: the wiring of all of the above.

pub mod activity;
pub mod agent;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod events;
pub mod exec;
pub mod faults;
pub mod fdbudget;
pub mod hooks;
pub mod http;
pub mod ingress;
pub mod keep;
pub mod log;
pub mod logs;
pub mod metadata;
pub mod panic;
pub mod sdkconfig;
pub mod supervisor;
pub mod sys;
pub mod transport;

pub use microvm_protocol as protocol;
