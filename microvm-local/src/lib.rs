//! microvm-local: `aws lambda-microvms run-microvm`, played locally.
//!
//! Boots an image (`make rootfs`) under QEMU with a vhost-device-vsock backend,
//! drives the agent over the hybrid vsock socket, streams the guest console to
//! stderr, and guarantees no QEMU or backend outlives it (hard timeout, signals,
//! parent-death signal on the children).
//!
//! ```text
//! microvm-local run-microvm --image-identifier build/example [--run-hook-payload S]
//!     [--logging V] [--idle-policy V] [--maximum-duration-in-seconds N]
//!     [--execution-role-arn ARN] [--client-token T] [--cli-input-json JSON|file://P]
//!     [--generate-cli-skeleton [input|output]]
//!     [--then ACTION,...] [--interactive] [--timeout SECONDS] [--endpoint-port PORT]
//! ```
//! ACTION: `suspend` (agent /suspend, then QMP stop), `resume` (QMP cont, then /resume
//! with the host's clock and fresh entropy), `terminate`, `status`, `sleep=N`.
//! Without --then or --interactive it runs until the guest powers off, the timeout,
//! or Ctrl-C (which terminates the MicroVM cleanly).
//!
//! ```text
//! microvm-local exec --microvm-identifier ID [--tty] [--user U] [--working-dir D]
//!     [--env K=V]... [--timeout-seconds N] -- COMMAND [ARG...]
//! microvm-local shell --microvm-identifier ID [--user U] [COMMAND [ARG...]]
//! microvm-local cp SRC DEST        (one of them ID:/absolute/path)
//! ```
//! These reach a MicroVM another run-microvm runs (with SHELL_INGRESS) by its id.
//!
//! The library is also the test harness's way to a real guest: [`vm`] boots one and
//! speaks to its agent, [`http`] is the one HTTP client of the host tools.
//!
//! - [`cli`]: the command line (clap), in the AWS CLI's words and exit codes.
//! - [`params`], [`shorthand`], [`validate`]: run-microvm parameters.
//! - [`credentials`]: the execution role's credentials and their rotation;
//! - [`run`]: the run-microvm command; [`session`]: suspend/resume/terminate, events,
//!   the endpoint; [`console`]: the guest console; [`signals`]: stopping.
//! - [`exec`]: the exec and files client (sessions, frames, tar streams) over any
//!   connected Unix stream; [`connect`]: a MicroVM by id; [`attach`]: the `exec` and
//!   `shell` commands; [`terminal`]: raw mode and window size; [`cp`]: `cp`.
//! - [`serve`]: the local Lambda MicroVMs endpoint (`microvm-local serve`);
//!   [`wsshell`]: the shell over WebSocket, both ends.
//! - [`vm`]: QEMU + vhost-device-vsock, hybrid vsock, QMP; [`http`]: the client;
//!   [`bridge`]: the per-connection bridge of a forwarded egress endpoint;
//!   [`host`]: the host's clock, entropy, ids and timestamps.

pub mod attach;
pub mod bridge;
pub mod cli;
pub mod connect;
pub mod console;
pub mod cp;
pub mod credentials;
pub mod exec;
pub mod host;
pub mod http;
pub mod params;
pub mod run;
pub mod serve;
pub mod session;
pub mod shorthand;
pub mod signals;
pub mod terminal;
pub mod validate;
pub mod vm;
pub mod wsshell;
