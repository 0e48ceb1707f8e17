//! The command line (clap), with the AWS CLI's wording and exit codes where clap's
//! differ: usage errors are `aws: error: ...` with exit 252, constraint failures
//! `Parameter validation failed:` with exit 255; `--help` and `--version` exit 0.

use crate::attach::Target;
use crate::params::{self, CliError, Invocation, RunArgs};
use clap::error::{ContextKind, ErrorKind};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use std::ffi::OsString;

#[derive(Debug, Parser)]
#[command(
    name = "microvm-local",
    version,
    about = "Plays `aws lambda-microvms run-microvm` locally: boots an image under QEMU and drives its agent over vsock",
    // Like the AWS CLI: a repeated option takes its last value.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    operation: Operation,
}

#[derive(Debug, Subcommand)]
enum Operation {
    /// Boot an image, run its hooks, and print the RunMicrovm output.
    #[command(name = "run-microvm")]
    RunMicrovm(Box<RunMicrovm>),
    /// Local only: boot an image once, answer its image-build hooks and save the
    /// snapshot every run of it restores from (as the platform does per image version).
    #[command(name = "snapshot-image")]
    SnapshotImage(SnapshotImage),
    /// Run a command in a running MicroVM (one run with the SHELL_INGRESS or
    /// ALL_INGRESS connector): stdin is forwarded until its end, stdout and stderr
    /// come back, and the command's status is the exit code (128+N for signal N;
    /// 127: no such command; 126: it cannot be executed; 254: no such MicroVM; 255:
    /// refused or broken off).
    Exec(ExecCmd),
    /// An interactive terminal in a running MicroVM (SHELL_INGRESS): the local terminal
    /// in raw mode, its size followed; exits with the remote program's status.
    Shell(ShellCmd),
    /// Copy a file or directory into or out of a running MicroVM (SHELL_INGRESS), as
    /// `docker cp`: one of SRC and DEST is MICROVM_ID:/absolute/path. Into an existing
    /// directory under the source's name, else under DEST's name in its existing parent.
    /// Modes, numeric owners, times and symlinks are kept (owners locally only as root).
    /// Exit 0, 254 without such a MicroVM, 255 on any other failure.
    Cp(CpCmd),
    /// A local Lambda MicroVMs endpoint on 127.0.0.1 for the AWS CLI and SDKs
    /// (`--endpoint-url`): the MicroVM operations over the images of --images, each
    /// MicroVM's authenticated ingress endpoint, and a CloudWatch Logs subset its
    /// agent writes to and `aws logs` reads. Runs until SIGINT or SIGTERM, then
    /// terminates every MicroVM.
    Serve(ServeCmd),
}

#[derive(Debug, Args)]
struct ServeCmd {
    /// The directory of images (each a `make rootfs` output directory, named by it).
    #[arg(long, value_name = "DIR", default_value = "build")]
    images: std::path::PathBuf,
    /// CreateMicrovmImage's installer: a checkout's `rootfs/image.sh` (the code
    /// artifact over a base in `IMAGES/base`, with that checkout's agent). The
    /// default is relative to the directory serve starts in: the checkout's root.
    #[arg(long, value_name = "PATH", default_value = "rootfs/image.sh")]
    image_builder: std::path::PathBuf,
    /// TCP port on 127.0.0.1 (0: any free port; the first stdout line says which).
    #[arg(long, value_name = "PORT", default_value_t = 9090)]
    port: u16,
    /// Where logs and each MicroVM's runner log are kept.
    #[arg(long, value_name = "DIR", default_value = ".microvm-local")]
    state_dir: std::path::PathBuf,
    /// The region in ARNs (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// The account id in ARNs.
    #[arg(long, value_name = "ID", default_value = "000000000000")]
    account_id: String,
    /// Accept any request signature (or none) instead of checking SigV4 against
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    accept_any_signature: bool,
    /// How long a terminated MicroVM stays visible (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    terminated_retention_seconds: u64,
    /// The most MicroVMs run at once (each a QEMU); RunMicrovm beyond it is a
    /// ServiceQuotaExceededException.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_microvms: u32,
    /// Test only: lowers the agents' minimum idle duration.
    #[arg(long, value_name = "SECONDS", hide = true)]
    test_min_idle_seconds: Option<u64>,
    /// Test only: the length of an auth token's "minute", so that expiry is seen
    /// without waiting one.
    #[arg(long, value_name = "SECONDS", hide = true)]
    test_token_minute_seconds: Option<u64>,
}

/// What exec and shell share: the process's user, directory and environment.
#[derive(Debug, Args)]
struct ProcessOpts {
    /// The MicroVM, by the microvmId run-microvm printed.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "endpoint_url",
        conflicts_with = "endpoint_url"
    )]
    microvm_identifier: Option<String>,
    /// Instead: a MicroVM a `microvm-local serve` endpoint keeps, by its endpoint URL
    /// (get-microvm's `endpoint`); the shell over WebSocket.
    #[arg(long, value_name = "URL", requires = "auth_token")]
    endpoint_url: Option<String>,
    /// With --endpoint-url: the `X-aws-proxy-auth` value of
    /// create-microvm-shell-auth-token's answer.
    #[arg(long, value_name = "TOKEN", requires = "endpoint_url")]
    auth_token: Option<String>,
    /// The user to run as: NAME, UID, NAME:GROUP or UID:GID, from the image's
    /// /etc/passwd and /etc/group (default root).
    #[arg(long, value_name = "USER", allow_hyphen_values = true)]
    user: Option<String>,
    /// The working directory, absolute (default /).
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    working_dir: Option<String>,
    /// An environment variable added to the application's environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    env: Vec<String>,
    /// Kill the command's process group this many seconds after it started.
    #[arg(long, value_name = "SECONDS")]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Args)]
struct ExecCmd {
    #[command(flatten)]
    process: ProcessOpts,
    /// Run the command on a terminal of the local terminal's size (one output
    /// stream; local raw mode when stdin is a terminal).
    #[arg(long)]
    tty: bool,
    /// The command and its arguments (after `--` when an argument starts with '-').
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct ShellCmd {
    #[command(flatten)]
    process: ProcessOpts,
    /// The program and its arguments (default /bin/sh).
    #[arg(
        value_name = "COMMAND",
        num_args = 0..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct CpCmd {
    /// A local path, or MICROVM_ID:/absolute/path.
    #[arg(value_name = "SRC", allow_hyphen_values = true)]
    src: String,
    /// A local path, or MICROVM_ID:/absolute/path.
    #[arg(value_name = "DEST", allow_hyphen_values = true)]
    dst: String,
}

/// The exec request and target of exec's and shell's options.
fn exec_args(
    p: ProcessOpts,
    command: Vec<String>,
    tty: bool,
    shell: bool,
) -> Result<Invocation, CliError> {
    let mut env = std::collections::BTreeMap::new();
    for kv in &p.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "argument --env: expected KEY=VALUE, got {kv:?}"
                )))
            }
        }
    }
    let request = microvm_protocol::exec::ExecRequest {
        command,
        env,
        working_dir: p.working_dir,
        user: p.user,
        timeout_seconds: p.timeout_seconds,
        tty: None,
    };
    let target = match (p.microvm_identifier, p.endpoint_url, p.auth_token) {
        (Some(id), None, None) => Target::Local(id),
        (None, Some(url), Some(token)) => Target::Endpoint { url, token },
        _ => return Err(CliError::Usage(
            "the MicroVM is --microvm-identifier ID, or --endpoint-url URL with --auth-token TOKEN"
                .into(),
        )),
    };
    Ok(Invocation::Exec(Box::new(crate::attach::ExecArgs {
        target,
        request,
        tty,
        shell,
    })))
}

#[derive(Debug, Args)]
struct SnapshotImage {
    /// Image directory, as `make rootfs` writes it.
    #[arg(long, value_name = "PATH")]
    image_identifier: std::path::PathBuf,
}

// Every value is taken as given, even when it starts with '-' (a payload may).
#[derive(Debug, Args)]
struct RunMicrovm {
    /// Image directory (rootfs.ext4 + vmlinuz, as `make rootfs` writes it) or rootfs path.
    #[arg(long, value_name = "PATH", allow_hyphen_values = true)]
    image_identifier: Option<String>,
    /// The image's version (locally every image has one version, "1").
    #[arg(long, value_name = "VERSION", allow_hyphen_values = true)]
    image_version: Option<String>,
    /// Accepted and echoed; no credentials are minted locally.
    #[arg(long, value_name = "ARN", allow_hyphen_values = true)]
    execution_role_arn: Option<String>,
    /// JSON or shorthand: maxIdleDurationSeconds=N,suspendedDurationSeconds=N,autoResumeEnabled=BOOL.
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    idle_policy: Option<String>,
    /// JSON or shorthand: disabled={} | cloudWatch={logGroup=G,logStream=S}.
    #[arg(long, value_name = "VALUE", allow_hyphen_values = true)]
    logging: Option<String>,
    /// The string the application's /run hook receives.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    run_hook_payload: Option<String>,
    /// The MicroVM is terminated after this long (1-28800).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    maximum_duration_in_seconds: Option<i64>,
    /// Accepted and echoed (idempotency is the platform's).
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    client_token: Option<String>,
    /// Parameters as JSON (or file://PATH); options given as well override it.
    #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
    cli_input_json: Option<String>,
    /// Print a parameter (input) or output skeleton and exit.
    #[arg(
        long,
        value_name = "input|output",
        num_args = 0..=1,
        default_missing_value = "input",
        value_parser = ["input", "output"]
    )]
    generate_cli_skeleton: Option<String>,
    /// Actions after the run, in order: suspend, resume, terminate, status, sleep=N.
    #[arg(long, value_name = "ACTION,...", allow_hyphen_values = true)]
    then: Option<String>,
    /// Read actions from stdin, one a line (and quit).
    #[arg(long)]
    interactive: bool,
    /// Terminate the MicroVM after this many seconds, whatever happens.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    timeout: u64,
    /// Host TCP port of the MicroVM's endpoint (default: any free port).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        hide_default_value = true
    )]
    endpoint_port: u16,
    /// Ingress network connectors (ARNs or names such as HTTP_INGRESS), echoed;
    /// SHELL_INGRESS (or ALL_INGRESS) enables `microvm-local exec`, `shell` and `cp`
    /// against this MicroVM.
    #[arg(long, value_name = "CONNECTOR", num_args = 1..)]
    ingress_network_connectors: Option<Vec<String>>,
    /// Egress network connectors; INTERNET_EGRESS (name or ARN) opens full NAT egress
    /// locally (off by default: the guest reaches only --forward endpoints).
    #[arg(long, value_name = "CONNECTOR", num_args = 1..)]
    egress_network_connectors: Option<Vec<String>>,
    /// Local only: guest 10.0.2.100:GUEST_PORT reaches HOST:PORT on this machine
    /// (repeatable); the guest gets a NIC with restricted egress.
    #[arg(long, value_name = "GUEST_PORT=HOST:PORT", action = clap::ArgAction::Append)]
    forward: Vec<String>,
    /// Local only: the agent sends the application's logs to this CloudWatch Logs
    /// endpoint, as the guest sees it (e.g. http://10.0.2.100:4566 with --forward).
    #[arg(long, value_name = "URL")]
    logs_endpoint: Option<String>,
    /// Local only: boot the image's kernel even when the image has a snapshot.
    #[arg(long)]
    cold_boot: bool,
    /// Test only: lowers the agent's minimum idle duration.
    #[arg(long, value_name = "SECONDS", hide = true)]
    test_min_idle_seconds: Option<u64>,
    /// Test only: lifetime of generated role credentials.
    #[arg(long, value_name = "SECONDS", hide = true)]
    test_credentials_seconds: Option<u64>,
    /// `serve`'s runners: the endpoint on this Unix socket instead of a TCP port (the
    /// server's authenticating proxy is the only way in).
    #[arg(long, value_name = "PATH", hide = true)]
    endpoint_socket: Option<std::path::PathBuf>,
    /// `serve`'s runners: the MicroVM's id, chosen by the server.
    #[arg(long, value_name = "ID", hide = true)]
    microvm_id: Option<String>,
    /// `serve`'s runners: a failed action is also a JSON line on stdout
    /// (`{"action", "error"}`), so the server learns of it.
    #[arg(long, hide = true)]
    json_errors: bool,
}

/// Parse a whole command line (program name first).
pub fn parse_from<I, T>(argv: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(argv).map_err(clap_error)?;
    let a = match cli.operation {
        Operation::RunMicrovm(a) => a,
        Operation::SnapshotImage(s) => return Ok(Invocation::Snapshot(s.image_identifier)),
        Operation::Exec(e) => return exec_args(e.process, e.command, e.tty, false),
        Operation::Shell(s) => {
            let command = match s.command.is_empty() {
                true => vec![crate::attach::DEFAULT_SHELL.to_string()],
                false => s.command,
            };
            return exec_args(s.process, command, true, true);
        }
        Operation::Serve(s) => {
            let region = s
                .region
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                .unwrap_or_else(|| "us-east-1".into());
            return Ok(Invocation::Serve(Box::new(crate::serve::ServeArgs {
                images: s.images,
                image_builder: s.image_builder,
                port: s.port,
                state_dir: s.state_dir,
                region,
                account: s.account_id,
                accept_any_signature: s.accept_any_signature,
                retention: std::time::Duration::from_secs(s.terminated_retention_seconds),
                max_microvms: s.max_microvms as usize,
                test_min_idle_seconds: s.test_min_idle_seconds,
                token_minute: std::time::Duration::from_secs(
                    s.test_token_minute_seconds.unwrap_or(60),
                ),
            })));
        }
        Operation::Cp(c) => {
            return crate::cp::args(&c.src, &c.dst)
                .map(Invocation::Cp)
                .map_err(CliError::Usage)
        }
    };
    if let Some(kind) = a.generate_cli_skeleton {
        return Ok(Invocation::Skeleton(kind));
    }
    let mut request = match &a.cli_input_json {
        Some(v) => params::cli_input(v)?,
        None => Map::new(),
    };
    let strings = [
        ("imageIdentifier", &a.image_identifier),
        ("imageVersion", &a.image_version),
        ("executionRoleArn", &a.execution_role_arn),
        ("runHookPayload", &a.run_hook_payload),
        ("clientToken", &a.client_token),
    ];
    for (member, v) in strings {
        if let Some(v) = v {
            request.insert(member.into(), Value::String(v.clone()));
        }
    }
    for (member, flag, v) in [
        ("idlePolicy", "--idle-policy", &a.idle_policy),
        ("logging", "--logging", &a.logging),
    ] {
        if let Some(v) = v {
            request.insert(member.into(), params::structure(flag, v)?);
        }
    }
    if let Some(n) = a.maximum_duration_in_seconds {
        request.insert("maximumDurationInSeconds".into(), Value::from(n));
    }
    for (member, v) in [
        ("ingressNetworkConnectors", &a.ingress_network_connectors),
        ("egressNetworkConnectors", &a.egress_network_connectors),
    ] {
        if let Some(list) = v {
            request.insert(member.into(), Value::from(list.clone()));
        }
    }
    let forwards = a
        .forward
        .iter()
        .map(|f| params::forward(f))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(url) = &a.logs_endpoint {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "aws: error: argument --logs-endpoint: expected an http:// or https:// URL, got {url:?}"
            )));
        }
    }
    if let Some(n) = a.test_credentials_seconds {
        // Credentials that expire within the agent's warning window would be warned
        // about, and so rotated, as soon as they arrive.
        let window = microvm_protocol::limits::CREDENTIALS_WARNING_SECONDS;
        if n <= window {
            return Err(CliError::Usage(format!(
                "aws: error: argument --test-credentials-seconds: must exceed {window} (the agent warns that long before expiry), got {n}"
            )));
        }
    }
    let args = RunArgs {
        request,
        then: a
            .then
            .map(|t| t.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        interactive: a.interactive,
        timeout_s: a.timeout,
        endpoint_port: a.endpoint_port,
        test_min_idle_seconds: a.test_min_idle_seconds,
        cold_boot: a.cold_boot,
        forwards,
        logs_endpoint: a.logs_endpoint,
        credentials_lifetime_s: a
            .test_credentials_seconds
            .unwrap_or(crate::credentials::GENERATED_LIFETIME_S),
        endpoint_socket: a.endpoint_socket,
        microvm_id: a.microvm_id,
        json_errors: a.json_errors,
        ..RunArgs::default()
    };
    params::finish(args).map(|a| Invocation::Run(Box::new(a)))
}

/// clap's errors in the AWS CLI's words.
fn clap_error(e: clap::Error) -> CliError {
    let context = |kind| e.get(kind).map(|v| v.to_string()).unwrap_or_default();
    // clap names an option with its value placeholder (`--timeout <SECONDS>`).
    let arg = context(ContextKind::InvalidArg)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let value = context(ContextKind::InvalidValue);
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliError::Info(e.to_string()),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            CliError::Operation("the following arguments are required: operation".into())
        }
        ErrorKind::InvalidSubcommand => CliError::Operation(format!(
            "argument operation: Invalid choice: '{}', valid choices are: run-microvm, snapshot-image, exec, shell, cp, serve",
            context(ContextKind::InvalidSubcommand)
        )),
        ErrorKind::UnknownArgument => CliError::Usage(format!("Unknown options: {arg}")),
        ErrorKind::InvalidValue if value.is_empty() => {
            CliError::Usage(format!("argument {arg}: expected one argument"))
        }
        ErrorKind::InvalidValue => CliError::Usage(format!(
            "argument {arg}: Invalid choice: '{value}', valid choices are: {}",
            context(ContextKind::ValidValue).replace(", ", " | ")
        )),
        // Every validated value is a number.
        ErrorKind::ValueValidation => {
            CliError::Usage(format!("argument {arg}: invalid int value: '{value}'"))
        }
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            CliError::Usage(first.trim_start_matches("error: ").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(a: &[&str]) -> Result<RunArgs, CliError> {
        let argv = ["microvm-local", "run-microvm"].iter().chain(a);
        match parse_from(argv)? {
            Invocation::Run(r) => Ok(*r),
            Invocation::Skeleton(k) => panic!("skeleton {k}"),
            Invocation::Snapshot(p) => panic!("snapshot {}", p.display()),
            other => panic!("{other:?}"),
        }
    }

    fn top(a: &[&str]) -> Result<Invocation, CliError> {
        parse_from(["microvm-local"].iter().chain(a))
    }

    #[test]
    fn options_override_cli_input_json() {
        let a = p(&[
            "--cli-input-json",
            r#"{"imageIdentifier":"img","runHookPayload":"from-json","maximumDurationInSeconds":60}"#,
            "--run-hook-payload",
            "from-flag",
            "--idle-policy",
            "maxIdleDurationSeconds=120,suspendedDurationSeconds=0,autoResumeEnabled=false",
        ])
        .unwrap();
        assert_eq!(a.request["runHookPayload"], "from-flag");
        assert_eq!(a.request["maximumDurationInSeconds"], 60);
        assert_eq!(
            a.request["idlePolicy"],
            json!({"maxIdleDurationSeconds":120,"suspendedDurationSeconds":0,"autoResumeEnabled":false})
        );
        assert_eq!(a.envelope.run_hook_payload, "from-flag");
        assert_eq!(a.envelope.maximum_duration_in_seconds, Some(60));
        assert_eq!(a.timeout_s, 900);
    }

    #[test]
    fn runner_options() {
        let a = p(&[
            "--image-identifier",
            "i",
            "--then",
            "status,sleep=1,terminate",
            "--interactive",
            "--timeout",
            "5",
            "--endpoint-port",
            "8123",
            "--test-min-idle-seconds",
            "0",
            "--idle-policy",
            "maxIdleDurationSeconds=2,suspendedDurationSeconds=0,autoResumeEnabled=true",
        ])
        .unwrap();
        assert_eq!(a.then, ["status", "sleep=1", "terminate"]);
        assert!(a.interactive);
        assert_eq!((a.timeout_s, a.endpoint_port), (5, 8123));
        assert_eq!(a.test_min_idle_seconds, Some(0));
        // A repeated option takes its last value, as with the AWS CLI.
        let a = p(&["--image-identifier", "a", "--image-identifier", "b"]).unwrap();
        assert_eq!(a.request["imageIdentifier"], "b");
        // A value may start with '-'.
        let a = p(&["--image-identifier", "i", "--run-hook-payload", "--x"]).unwrap();
        assert_eq!(a.request["runHookPayload"], "--x");
    }

    #[test]
    fn constraints_with_the_cli_wording() {
        let e = p(&["--run-hook-payload", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 255);
        assert!(e.to_string().contains("Parameter validation failed:\nMissing required parameter in input: \"imageIdentifier\""), "{e}");
        // The service's maximum (4,096), not the agent's (16,384): the runner plays the
        // service and refuses what it would, as the CLI prints a service error.
        let big = "x".repeat(4097);
        let e = p(&["--image-identifier", "i", "--run-hook-payload", &big]).unwrap_err();
        assert_eq!(e.exit_code(), 254);
        assert_eq!(e.to_string(), "\nAn error occurred (ValidationException) when calling the RunMicrovm operation: 1 validation error detected: Value at 'runHookPayload' failed to satisfy constraint: Member must have length less than or equal to 4096");
        assert!(p(&[
            "--image-identifier",
            "i",
            "--run-hook-payload",
            &"x".repeat(4096)
        ])
        .unwrap()
        .warnings
        .is_empty());
        for (d, ok) in [
            ("0", false),
            ("1", true),
            ("28800", true),
            ("28801", false),
            ("-5", false),
        ] {
            let r = p(&[
                "--image-identifier",
                "i",
                "--maximum-duration-in-seconds",
                d,
            ]);
            assert_eq!(r.is_ok(), ok, "{d}");
            if let Err(e) = r {
                assert_eq!(e.exit_code(), 255, "{d}: {e}");
            }
        }
        let e = p(&[
            "--image-identifier",
            "i",
            "--maximum-duration-in-seconds",
            "ten",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 252);
        assert_eq!(
            e.to_string(),
            "aws: error: argument --maximum-duration-in-seconds: invalid int value: 'ten'"
        );
        let e = p(&[
            "--image-identifier",
            "i",
            "--idle-policy",
            "maxIdleDurationSeconds=59,suspendedDurationSeconds=0,autoResumeEnabled=true",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("valid min value: 60"), "{e}");
        let e = p(&[
            "--image-identifier",
            "i",
            "--idle-policy",
            "suspendedDurationSeconds=5",
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Missing required parameter in idlePolicy"),
            "{e}"
        );
        let e = p(&[
            "--image-identifier",
            "i",
            "--logging",
            "disabled={},cloudWatch={}",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let e = p(&["--image-identifier", "i", "--execution-role-arn", "role"]).unwrap_err();
        assert!(e.to_string().contains("executionRoleArn"), "{e}");
        assert!(p(&[
            "--image-identifier",
            "i",
            "--execution-role-arn",
            "arn:aws:iam::123456789012:role/x"
        ])
        .is_ok());
        let e = p(&[
            "--image-identifier",
            "i",
            "--client-token",
            &"t".repeat(129),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("clientToken"), "{e}");
        let e = p(&[
            "--cli-input-json",
            r#"{"imageIdentifier":"i","color":"red"}"#,
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Unknown parameter in input: \"color\""),
            "{e}"
        );
        let e = p(&["--cli-input-json", "[1]"]).unwrap_err();
        assert_eq!(e.exit_code(), 252);
        assert!(e.to_string().contains("Invalid JSON received"), "{e}");
        let e = p(&["--idle-policy", "{bad"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("Error parsing parameter '--idle-policy': Invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn clap_errors_in_the_cli_words_with_exit_252() {
        let e = p(&["--frobnicate"]).unwrap_err();
        assert_eq!(e, CliError::Usage("Unknown options: --frobnicate".into()));
        assert_eq!(e.exit_code(), 252);
        assert_eq!(e.to_string(), "aws: error: Unknown options: --frobnicate");
        let e = p(&["--image-identifier", "i", "stray"]).unwrap_err();
        assert_eq!(e.to_string(), "aws: error: Unknown options: stray");
        let e = p(&["--image-identifier"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aws: error: argument --image-identifier: expected one argument"
        );
        assert_eq!(e.exit_code(), 252);
        let e = p(&["--image-identifier", "i", "--timeout", "soon"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aws: error: argument --timeout: invalid int value: 'soon'"
        );
        let e = p(&["--image-identifier", "i", "--endpoint-port", "70000"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aws: error: argument --endpoint-port: invalid int value: '70000'"
        );
        let e = p(&["--generate-cli-skeleton", "yaml"]).unwrap_err();
        assert_eq!(e.exit_code(), 252);
        assert!(e.to_string().contains("input | output"), "{e}");
        for argv in [&["frobnicate"][..], &[]] {
            let e = top(argv).unwrap_err();
            assert_eq!(e.exit_code(), 252, "{argv:?}");
            let text = e.to_string();
            assert!(text.starts_with(params::USAGE), "{text}");
            assert!(text.contains("aws: error: "), "{text}");
        }
        assert!(top(&["frobnicate"])
            .unwrap_err()
            .to_string()
            .contains("Invalid choice: 'frobnicate', valid choices are: run-microvm"));
    }

    #[test]
    fn help_and_version_print_and_exit_0() {
        for argv in [
            &["--help"][..],
            &["-h"],
            &["help"],
            &["--version"],
            &["run-microvm", "--help"],
            &["help", "run-microvm"],
        ] {
            let e = top(argv).unwrap_err();
            assert!(matches!(e, CliError::Info(_)), "{argv:?}: {e:?}");
            assert_eq!(e.exit_code(), 0);
        }
        let help = top(&["run-microvm", "--help"]).unwrap_err().to_string();
        for flag in [
            "--image-identifier",
            "--run-hook-payload",
            "--generate-cli-skeleton",
            "--then",
        ] {
            assert!(help.contains(flag), "{flag} in {help}");
        }
        assert!(
            !help.contains("--test-min-idle-seconds"),
            "test-only flag hidden"
        );
        let version = top(&["--version"]).unwrap_err().to_string();
        assert_eq!(
            version,
            format!("microvm-local {}", env!("CARGO_PKG_VERSION"))
        );
    }

    fn exec_of(a: &[&str]) -> crate::attach::ExecArgs {
        match top(a).unwrap() {
            Invocation::Exec(e) => *e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_and_shell_options() {
        let e = exec_of(&[
            "exec",
            "--microvm-identifier",
            "mvm-1",
            "--user",
            "1000:1000",
            "--working-dir",
            "/tmp",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--timeout-seconds",
            "5",
            "--",
            "sh",
            "-c",
            "echo --env",
        ]);
        assert_eq!(e.target, Target::Local("mvm-1".into()));
        assert_eq!(e.request.command, ["sh", "-c", "echo --env"]);
        assert_eq!(e.request.env["B"], "x=y");
        assert_eq!(e.request.env.len(), 2);
        assert_eq!(e.request.user.as_deref(), Some("1000:1000"));
        assert_eq!(e.request.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(e.request.timeout_seconds, Some(5));
        assert!(!e.tty && !e.shell);
        // Without `--`, the first word starts the command; what follows is its own.
        let e = exec_of(&[
            "exec",
            "--microvm-identifier",
            "m",
            "--tty",
            "ls",
            "-la",
            "--tty",
        ]);
        assert_eq!(e.request.command, ["ls", "-la", "--tty"]);
        assert!(e.tty);
        let s = exec_of(&["shell", "--microvm-identifier", "m"]);
        assert_eq!(s.request.command, ["/bin/sh"]);
        assert!(s.shell && s.tty);
        let s = exec_of(&["shell", "--microvm-identifier", "m", "bash", "-l"]);
        assert_eq!(s.request.command, ["bash", "-l"]);
        // A MicroVM of a local endpoint: its URL and a shell token.
        let s = exec_of(&[
            "shell",
            "--endpoint-url",
            "http://127.0.0.1:4000",
            "--auth-token",
            "mvs-x",
        ]);
        assert_eq!(
            s.target,
            Target::Endpoint {
                url: "http://127.0.0.1:4000".into(),
                token: "mvs-x".into()
            }
        );
        for bad in [
            &["exec", "--microvm-identifier", "m"][..],
            &["shell", "--endpoint-url", "http://127.0.0.1:1"],
            &["shell", "--auth-token", "t", "--microvm-identifier", "m"],
            &[
                "shell",
                "--microvm-identifier",
                "m",
                "--endpoint-url",
                "http://127.0.0.1:1",
                "--auth-token",
                "t",
            ],
            &["exec", "true"],
            &[
                "exec",
                "--microvm-identifier",
                "m",
                "--env",
                "novalue",
                "true",
            ],
            &["exec", "--microvm-identifier", "m", "--env", "=v", "true"],
            &[
                "exec",
                "--microvm-identifier",
                "m",
                "--timeout-seconds",
                "x",
                "true",
            ],
        ] {
            let e = top(bad).unwrap_err();
            assert_eq!(e.exit_code(), 252, "{bad:?}: {e}");
        }
        let help = top(&["exec", "--help"]).unwrap_err().to_string();
        for flag in [
            "--microvm-identifier",
            "--tty",
            "--user",
            "--working-dir",
            "--env",
            "--timeout-seconds",
        ] {
            assert!(help.contains(flag), "{flag} in {help}");
        }
        let help = top(&["run-microvm", "--help"]).unwrap_err().to_string();
        assert!(help.contains("SHELL_INGRESS"), "{help}");
    }

    #[test]
    fn cp_needs_exactly_one_remote_side() {
        assert_eq!(
            top(&["cp", "./f", "mvm-1:/tmp/"]).unwrap(),
            Invocation::Cp(crate::cp::CpArgs::In {
                local: "./f".into(),
                id: "mvm-1".into(),
                remote: "/tmp/".into()
            })
        );
        assert!(matches!(
            top(&["cp", "mvm-1:/etc/hostname", "."]).unwrap(),
            Invocation::Cp(crate::cp::CpArgs::Out { .. })
        ));
        let e = top(&["cp", "a", "b"]).unwrap_err();
        assert_eq!(e.exit_code(), 252);
        assert!(e.to_string().contains("exactly one of SRC and DEST"), "{e}");
        assert_eq!(top(&["cp", "a"]).unwrap_err().exit_code(), 252);
    }

    #[test]
    fn skeletons_skip_validation() {
        assert_eq!(
            top(&["run-microvm", "--generate-cli-skeleton"]).unwrap(),
            Invocation::Skeleton("input".into())
        );
        assert_eq!(
            top(&["run-microvm", "--generate-cli-skeleton", "output"]).unwrap(),
            Invocation::Skeleton("output".into())
        );
        // Followed by an option: the default kind, and nothing is validated.
        assert_eq!(
            top(&[
                "run-microvm",
                "--generate-cli-skeleton",
                "--run-hook-payload",
                "x"
            ])
            .unwrap(),
            Invocation::Skeleton("input".into())
        );
    }
}
