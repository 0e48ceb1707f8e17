//! The image config (DESIGN.md contract 1) and the host's run request (contract 2).
//!
//! Parsing is strict: unknown fields and out-of-range values are errors that name the
//! field by its JSON path, because the person reading the error is an image author
//! looking at their `image.json`, not at our source.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// RunMicrovm's range for `maximumDurationInSeconds` (8 hours).
pub const MAX_DURATION_SECONDS: u64 = 28_800;

/// Largest `runHookPayload`, in UTF-8 bytes (the platform's documented limit).
pub const MAX_RUN_HOOK_PAYLOAD: usize = 16_384;

/// A config or request that failed validation; `field` is the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read image config {path}: {source} (pass --image-config PATH or put it at /etc/microvm/image.json)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid image config {path}: {error}")]
    Invalid { path: String, error: FieldError },
}

/// Deserialize JSON and report the path of the first bad field (`hooks.port`, ...).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(body)".to_string()
        } else {
            path
        };
        // serde_json appends " at line L column C", which is noise next to a field path.
        let msg = e.inner().to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        FieldError::new(field, msg)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Toggle {
    Enabled,
    #[default]
    Disabled,
}

pub use hook_sdk::Hook;

/// The AWS `MicrovmImageHooks` object.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageHooks {
    #[serde(default)]
    pub ready: Toggle,
    #[serde(default = "default_image_build_timeout")]
    pub ready_timeout_in_seconds: u64,
    #[serde(default)]
    pub validate: Toggle,
    #[serde(default = "default_image_build_timeout")]
    pub validate_timeout_in_seconds: u64,
}

/// The AWS `MicrovmHooks` object (runtime hooks).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeHooks {
    #[serde(default)]
    pub run: Toggle,
    #[serde(default = "default_runtime_timeout")]
    pub run_timeout_in_seconds: u64,
    #[serde(default)]
    pub resume: Toggle,
    #[serde(default = "default_runtime_timeout")]
    pub resume_timeout_in_seconds: u64,
    #[serde(default)]
    pub suspend: Toggle,
    #[serde(default = "default_runtime_timeout")]
    pub suspend_timeout_in_seconds: u64,
    #[serde(default)]
    pub terminate: Toggle,
    #[serde(default = "default_runtime_timeout")]
    pub terminate_timeout_in_seconds: u64,
}

impl Default for ImageHooks {
    fn default() -> Self {
        ImageHooks {
            ready: Toggle::Disabled,
            ready_timeout_in_seconds: default_image_build_timeout(),
            validate: Toggle::Disabled,
            validate_timeout_in_seconds: default_image_build_timeout(),
        }
    }
}

impl Default for RuntimeHooks {
    fn default() -> Self {
        let t = default_runtime_timeout();
        RuntimeHooks {
            run: Toggle::Disabled,
            run_timeout_in_seconds: t,
            resume: Toggle::Disabled,
            resume_timeout_in_seconds: t,
            suspend: Toggle::Disabled,
            suspend_timeout_in_seconds: t,
            terminate: Toggle::Disabled,
            terminate_timeout_in_seconds: t,
        }
    }
}

/// The AWS `Hooks` object plus the port the application serves them on.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hooks {
    #[serde(default = "default_hooks_port")]
    pub port: u32,
    #[serde(default)]
    pub microvm_image_hooks: ImageHooks,
    #[serde(default)]
    pub microvm_hooks: RuntimeHooks,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            port: default_hooks_port(),
            microvm_image_hooks: ImageHooks::default(),
            microvm_hooks: RuntimeHooks::default(),
        }
    }
}

impl Hooks {
    /// Whether the agent calls the application for `hook`, and within what time.
    pub fn setting(&self, hook: Hook) -> (Toggle, Duration) {
        let (i, r) = (&self.microvm_image_hooks, &self.microvm_hooks);
        let (t, s) = match hook {
            Hook::Ready => (i.ready, i.ready_timeout_in_seconds),
            Hook::Validate => (i.validate, i.validate_timeout_in_seconds),
            Hook::Run => (r.run, r.run_timeout_in_seconds),
            Hook::Resume => (r.resume, r.resume_timeout_in_seconds),
            Hook::Suspend => (r.suspend, r.suspend_timeout_in_seconds),
            Hook::Terminate => (r.terminate, r.terminate_timeout_in_seconds),
        };
        (t, Duration::from_secs(s))
    }

    pub fn port(&self) -> u16 {
        // validate() guarantees the range; the fallback is never taken for a valid config.
        u16::try_from(self.port).unwrap_or(default_hooks_port() as u16)
    }

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=65_535).contains(&self.port) {
            return Err(FieldError::new(
                "hooks.port",
                format!("must be 1-65535, got {}", self.port),
            ));
        }
        for hook in Hook::ALL {
            let (_, timeout) = self.setting(hook);
            let (group, max) = if hook.is_image_build() {
                ("microvmImageHooks", 3600)
            } else {
                ("microvmHooks", 60)
            };
            let secs = timeout.as_secs();
            if !(1..=max).contains(&secs) {
                return Err(FieldError::new(
                    format!("hooks.{group}.{}TimeoutInSeconds", hook.name()),
                    format!("must be 1-{max} seconds, got {secs}"),
                ));
            }
        }
        Ok(())
    }
}

fn default_hooks_port() -> u32 {
    9000
}
fn default_image_build_timeout() -> u64 {
    60
}
fn default_runtime_timeout() -> u64 {
    5
}

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
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
}

impl Logging {
    /// AWS CreateLogGroup / CreateLogStream name rules.
    pub fn validate(&self, at: &str) -> Result<(), FieldError> {
        let Logging::CloudWatch(cw) = self else {
            return Ok(());
        };
        if let Some(g) = &cw.log_group {
            let ok = (1..=512).contains(&g.len())
                && g.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c));
            if !ok {
                return Err(FieldError::new(
                    format!("{at}.cloudWatch.logGroup"),
                    "must be 1-512 characters of [a-zA-Z0-9_-/.#]",
                ));
            }
        }
        if let Some(s) = &cw.log_stream {
            let ok = (1..=512).contains(&s.len()) && !s.contains([':', '*']);
            if !ok {
                return Err(FieldError::new(
                    format!("{at}.cloudWatch.logStream"),
                    "must be 1-512 characters, without ':' or '*'",
                ));
            }
        }
        Ok(())
    }
}

/// What the agent does when the application exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ExitPolicy {
    /// Like EC2's instance-initiated shutdown behaviour `terminate`.
    #[default]
    Terminate,
    /// Start it again, with exponential backoff.
    Restart,
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

pub const DEFAULT_LOG_BUFFER: usize = 64 * 1024 * 1024;
/// The buffer must hold at least one maximal PutLogEvents batch.
pub const MIN_LOG_BUFFER: usize = 2 * 1024 * 1024;
pub const MAX_LOG_BUFFER: usize = 1024 * 1024 * 1024;

/// How the agent handles application logs (an addition to the image config).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogsSettings {
    #[serde(default = "default_log_buffer")]
    pub buffer_bytes: usize,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Also print application lines on the console (for local runs).
    #[serde(default)]
    pub mirror_to_console: bool,
}

fn default_log_buffer() -> usize {
    DEFAULT_LOG_BUFFER
}

impl Default for LogsSettings {
    fn default() -> Self {
        LogsSettings {
            buffer_bytes: DEFAULT_LOG_BUFFER,
            when_full: WhenFull::Block,
            mirror_to_console: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageConfig {
    pub image_name: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    #[serde(default)]
    pub hooks: Hooks,
    pub logging: Option<Logging>,
    #[serde(default)]
    pub on_application_exit: ExitPolicy,
    #[serde(default)]
    pub logs: LogsSettings,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, FieldError> {
        let cfg: ImageConfig = from_json(bytes)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes).map_err(|error| ConfigError::Invalid {
            path: path.display().to_string(),
            error,
        })
    }

    fn validate(&self) -> Result<(), FieldError> {
        // The name becomes part of the default log group, so it follows that alphabet.
        let name_ok = (1..=128).contains(&self.image_name.len())
            && self
                .image_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.#".contains(c));
        if !name_ok {
            return Err(FieldError::new(
                "imageName",
                "must be 1-128 characters of [a-zA-Z0-9_-.#]",
            ));
        }
        match self.command.first() {
            None => return Err(FieldError::new("command", "must name a program")),
            Some(p) if p.is_empty() => {
                return Err(FieldError::new("command[0]", "must not be empty"))
            }
            _ => {}
        }
        if let Some(i) = self.command.iter().position(|a| a.contains('\0')) {
            return Err(FieldError::new(
                format!("command[{i}]"),
                "must not contain NUL",
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    "variable names must be non-empty, without '=' or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(FieldError::new(format!("env.{k}"), "must not contain NUL"));
            }
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(FieldError::new("workingDir", "must be an absolute path"));
            }
        }
        self.hooks.validate()?;
        if let Some(l) = &self.logging {
            l.validate("logging")?;
        }
        let b = self.logs.buffer_bytes;
        if !(MIN_LOG_BUFFER..=MAX_LOG_BUFFER).contains(&b) {
            return Err(FieldError::new(
                "logs.bufferBytes",
                format!("must be {MIN_LOG_BUFFER}-{MAX_LOG_BUFFER} bytes, got {b}"),
            ));
        }
        Ok(())
    }
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
    pub session_token: Option<String>,
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clock {
    pub unix_time_nanos: u64,
}

/// Smallest host entropy contribution that is worth a reseed.
pub const MIN_ENTROPY_BYTES: usize = 32;

/// The parts of `/run` and `/resume` that refresh a guest that may be a snapshot copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Freshness {
    pub clock: Option<Clock>,
    pub entropy: Option<Vec<u8>>,
    pub credentials: Option<Credentials>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRun {
    microvm_id: Option<String>,
    #[serde(default)]
    run_hook_payload: String,
    logging: Option<Logging>,
    idle_policy: Option<IdlePolicy>,
    maximum_duration_in_seconds: Option<u64>,
    region: Option<String>,
    credentials: Option<Credentials>,
    clock: Option<Clock>,
    entropy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResume {
    credentials: Option<Credentials>,
    clock: Option<Clock>,
    entropy: Option<String>,
}

/// The host's `/run` body, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub microvm_id: String,
    pub run_hook_payload: String,
    pub logging: Option<Logging>,
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration: Option<Duration>,
    pub region: Option<String>,
    pub fresh: Freshness,
}

/// Why a request body was refused: 400 or 413 to the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    TooLarge(FieldError),
}

impl From<FieldError> for RequestError {
    fn from(e: FieldError) -> Self {
        RequestError::Invalid(e)
    }
}

fn decode_entropy(b64: Option<String>) -> Result<Option<Vec<u8>>, FieldError> {
    use base64::Engine;
    let Some(s) = b64 else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| FieldError::new("entropy", format!("not valid base64: {e}")))?;
    if bytes.len() < MIN_ENTROPY_BYTES {
        return Err(FieldError::new(
            "entropy",
            format!(
                "must carry at least {MIN_ENTROPY_BYTES} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// An empty body means "no fields" for the hooks that need none.
fn body_or_empty(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

impl RunRequest {
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let raw: RawRun = from_json(body)?;
        let microvm_id = match raw.microvm_id {
            None => return Err(FieldError::new("microvmId", "is required").into()),
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(FieldError::new("microvmId", "must be 1-128 characters").into())
            }
            Some(id) => id,
        };
        if raw.run_hook_payload.len() > MAX_RUN_HOOK_PAYLOAD {
            return Err(RequestError::TooLarge(FieldError::new(
                "runHookPayload",
                format!(
                    "is {} bytes; at most {MAX_RUN_HOOK_PAYLOAD} are allowed",
                    raw.run_hook_payload.len()
                ),
            )));
        }
        if let Some(l) = &raw.logging {
            l.validate("logging")?;
        }
        if let Some(p) = &raw.idle_policy {
            if p.max_idle_duration_seconds == 0 {
                return Err(FieldError::new(
                    "idlePolicy.maxIdleDurationSeconds",
                    "must be at least 1",
                )
                .into());
            }
        }
        if let Some(d) = raw.maximum_duration_in_seconds {
            if !(1..=MAX_DURATION_SECONDS).contains(&d) {
                return Err(FieldError::new(
                    "maximumDurationInSeconds",
                    format!("must be 1-{MAX_DURATION_SECONDS}, got {d}"),
                )
                .into());
            }
        }
        if matches!(&raw.region, Some(r) if r.is_empty()) {
            return Err(FieldError::new("region", "must not be empty").into());
        }
        Ok(RunRequest {
            microvm_id,
            run_hook_payload: raw.run_hook_payload,
            logging: raw.logging,
            idle_policy: raw.idle_policy,
            maximum_duration: raw.maximum_duration_in_seconds.map(Duration::from_secs),
            region: raw.region,
            fresh: Freshness {
                clock: raw.clock,
                entropy: decode_entropy(raw.entropy)?,
                credentials: raw.credentials,
            },
        })
    }

    /// Exactly what the application's `/run` hook receives.
    pub fn app_body(&self) -> Vec<u8> {
        serde_json::json!({
            "microvmId": self.microvm_id,
            "runHookPayload": self.run_hook_payload,
        })
        .to_string()
        .into_bytes()
    }
}

/// The host's `/resume` body (all optional).
pub fn parse_resume(body: &[u8]) -> Result<Freshness, RequestError> {
    let raw: RawResume = from_json(body_or_empty(body))?;
    Ok(Freshness {
        clock: raw.clock,
        entropy: decode_entropy(raw.entropy)?,
        credentials: raw.credentials,
    })
}

/// `/ready`, `/validate`, `/suspend`, `/terminate` take no fields: empty or `{}`.
pub fn parse_empty(body: &[u8]) -> Result<(), RequestError> {
    let _: Empty = from_json(body_or_empty(body))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(json: &str) -> Result<ImageConfig, FieldError> {
        ImageConfig::parse(json.as_bytes())
    }

    fn with_hooks(hooks: &str) -> String {
        format!(r#"{{"imageName":"i","command":["/a"],"hooks":{hooks}}}"#)
    }

    fn err_field(json: &str) -> String {
        img(json).expect_err("config must be refused").field
    }

    #[test]
    fn design_example_parses() {
        let cfg = img(r#"{
          "imageName": "my-image",
          "command": ["/app/server", "--port", "8080"],
          "env": {"RUST_LOG": "info"},
          "workingDir": "/app",
          "hooks": {
            "port": 9000,
            "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 60,
                                  "validate": "DISABLED", "validateTimeoutInSeconds": 30},
            "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 2,
                             "resume": "ENABLED", "resumeTimeoutInSeconds": 2,
                             "suspend": "ENABLED", "suspendTimeoutInSeconds": 5,
                             "terminate": "ENABLED", "terminateTimeoutInSeconds": 5}
          },
          "logging": {"cloudWatch": {"logGroup": "/my-app/microvms"}}
        }"#)
        .expect("valid");
        assert_eq!(cfg.image_name, "my-image");
        assert_eq!(cfg.command, ["/app/server", "--port", "8080"]);
        assert_eq!(cfg.env["RUST_LOG"], "info");
        assert_eq!(cfg.working_dir.as_deref(), Some("/app"));
        assert_eq!(cfg.hooks.port(), 9000);
        assert_eq!(
            cfg.hooks.setting(Hook::Ready),
            (Toggle::Enabled, Duration::from_secs(60))
        );
        assert_eq!(
            cfg.hooks.setting(Hook::Validate),
            (Toggle::Disabled, Duration::from_secs(30))
        );
        assert_eq!(
            cfg.hooks.setting(Hook::Run),
            (Toggle::Enabled, Duration::from_secs(2))
        );
        assert_eq!(
            cfg.hooks.setting(Hook::Terminate),
            (Toggle::Enabled, Duration::from_secs(5))
        );
        assert_eq!(
            cfg.logging,
            Some(Logging::CloudWatch(CloudWatchLogging {
                log_group: Some("/my-app/microvms".into()),
                log_stream: None
            }))
        );
        assert_eq!(cfg.on_application_exit, ExitPolicy::Terminate);
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let cfg = img(r#"{"imageName":"i","command":["/a"]}"#).expect("valid");
        assert_eq!(cfg.hooks.port(), 9000);
        for hook in Hook::ALL {
            let (toggle, t) = cfg.hooks.setting(hook);
            assert_eq!(toggle, Toggle::Disabled, "{hook:?}");
            let want = if hook.is_image_build() { 60 } else { 5 };
            assert_eq!(t, Duration::from_secs(want), "{hook:?}");
        }
        assert!(cfg.env.is_empty());
        assert_eq!(cfg.logging, None);
    }

    #[test]
    fn required_fields_are_named() {
        assert_eq!(err_field(r#"{"command":["/a"]}"#), "(body)");
        assert!(img(r#"{"command":["/a"]}"#)
            .unwrap_err()
            .message
            .contains("imageName"));
        assert!(img(r#"{"imageName":"i"}"#)
            .unwrap_err()
            .message
            .contains("command"));
        assert_eq!(err_field(r#"{"imageName":"i","command":[]}"#), "command");
        assert_eq!(
            err_field(r#"{"imageName":"i","command":[""]}"#),
            "command[0]"
        );
        assert_eq!(
            err_field(r#"{"imageName":"i","command":["/a","b\u0000"]}"#),
            "command[1]"
        );
    }

    #[test]
    fn image_name_alphabet_and_length() {
        assert_eq!(
            err_field(r#"{"imageName":"","command":["/a"]}"#),
            "imageName"
        );
        assert_eq!(
            err_field(r#"{"imageName":"a b","command":["/a"]}"#),
            "imageName"
        );
        let long = "a".repeat(129);
        assert_eq!(
            err_field(&format!(r#"{{"imageName":"{long}","command":["/a"]}}"#)),
            "imageName"
        );
        let ok = "a".repeat(128);
        assert!(img(&format!(r#"{{"imageName":"{ok}","command":["/a"]}}"#)).is_ok());
    }

    #[test]
    fn unknown_fields_are_errors_naming_them() {
        let e = img(r#"{"imageName":"i","command":["/a"],"comand":1}"#).unwrap_err();
        assert_eq!(e.field, "comand");
        assert!(e.message.contains("unknown field `comand`"), "{e}");
        let e = img(&with_hooks(r#"{"microvmHooks":{"runTimeout":3}}"#)).unwrap_err();
        assert_eq!(e.field, "hooks.microvmHooks.runTimeout");
        assert!(e.message.contains("runTimeout"), "{e}");
    }

    #[test]
    fn env_and_working_dir() {
        assert_eq!(
            err_field(r#"{"imageName":"i","command":["/a"],"env":{"A=B":"x"}}"#),
            "env.A=B"
        );
        assert_eq!(
            err_field(r#"{"imageName":"i","command":["/a"],"env":{"A":1}}"#),
            "env.A"
        );
        assert_eq!(
            err_field(r#"{"imageName":"i","command":["/a"],"workingDir":"app"}"#),
            "workingDir"
        );
    }

    #[test]
    fn hooks_port_range() {
        assert_eq!(err_field(&with_hooks(r#"{"port":0}"#)), "hooks.port");
        assert_eq!(err_field(&with_hooks(r#"{"port":65536}"#)), "hooks.port");
        assert_eq!(err_field(&with_hooks(r#"{"port":-1}"#)), "hooks.port");
        assert_eq!(err_field(&with_hooks(r#"{"port":"80"}"#)), "hooks.port");
        for ok in [1, 8080, 65535] {
            let cfg = img(&with_hooks(&format!(r#"{{"port":{ok}}}"#))).expect("valid");
            assert_eq!(u32::from(cfg.hooks.port()), ok);
        }
    }

    #[test]
    fn toggles_are_enabled_or_disabled_only() {
        assert_eq!(
            err_field(&with_hooks(r#"{"microvmHooks":{"run":"enabled"}}"#)),
            "hooks.microvmHooks.run"
        );
        assert_eq!(
            err_field(&with_hooks(r#"{"microvmImageHooks":{"ready":true}}"#)),
            "hooks.microvmImageHooks.ready"
        );
    }

    #[test]
    fn runtime_hook_timeouts_are_1_to_60() {
        for hook in ["run", "resume", "suspend", "terminate"] {
            let field = format!("hooks.microvmHooks.{hook}TimeoutInSeconds");
            for bad in [0, 61, 3600] {
                let j = with_hooks(&format!(
                    r#"{{"microvmHooks":{{"{hook}TimeoutInSeconds":{bad}}}}}"#
                ));
                assert_eq!(err_field(&j), field, "{hook}={bad}");
            }
            for good in [1, 60] {
                let j = with_hooks(&format!(
                    r#"{{"microvmHooks":{{"{hook}TimeoutInSeconds":{good}}}}}"#
                ));
                assert!(img(&j).is_ok(), "{hook}={good}");
            }
        }
    }

    #[test]
    fn image_build_hook_timeouts_are_1_to_3600() {
        for hook in ["ready", "validate"] {
            let field = format!("hooks.microvmImageHooks.{hook}TimeoutInSeconds");
            for bad in [0, 3601] {
                let j = with_hooks(&format!(
                    r#"{{"microvmImageHooks":{{"{hook}TimeoutInSeconds":{bad}}}}}"#
                ));
                assert_eq!(err_field(&j), field, "{hook}={bad}");
            }
            for good in [1, 61, 3600] {
                let j = with_hooks(&format!(
                    r#"{{"microvmImageHooks":{{"{hook}TimeoutInSeconds":{good}}}}}"#
                ));
                assert!(img(&j).is_ok(), "{hook}={good}");
            }
        }
    }

    #[test]
    fn logging_union() {
        let base = r#"{"imageName":"i","command":["/a"],"logging":"#;
        let cfg = img(&format!(r#"{base}{{"disabled":{{}}}}}}"#)).expect("valid");
        assert_eq!(cfg.logging, Some(Logging::Disabled(Empty {})));
        assert_eq!(
            err_field(&format!(r#"{base}{{"disabled":{{"x":1}}}}}}"#)),
            "logging.disabled.x"
        );
        assert_eq!(
            err_field(&format!(r#"{base}{{"syslog":{{}}}}}}"#)),
            "logging"
        );
        assert_eq!(
            err_field(&format!(
                r#"{base}{{"cloudWatch":{{"logGroup":"bad group"}}}}}}"#
            )),
            "logging.cloudWatch.logGroup"
        );
        assert_eq!(
            err_field(&format!(
                r#"{base}{{"cloudWatch":{{"logStream":"a:b"}}}}}}"#
            )),
            "logging.cloudWatch.logStream"
        );
        assert_eq!(
            err_field(&format!(r#"{base}{{"cloudWatch":{{"logStream":""}}}}}}"#)),
            "logging.cloudWatch.logStream"
        );
        let long = "g".repeat(513);
        assert_eq!(
            err_field(&format!(
                r#"{base}{{"cloudWatch":{{"logGroup":"{long}"}}}}}}"#
            )),
            "logging.cloudWatch.logGroup"
        );
    }

    #[test]
    fn log_settings() {
        let cfg = img(r#"{"imageName":"i","command":["/a"]}"#).unwrap();
        assert_eq!(cfg.logs, LogsSettings::default());
        assert_eq!(cfg.logs.buffer_bytes, 64 * 1024 * 1024);
        let cfg = img(r#"{"imageName":"i","command":["/a"],"logs":{"bufferBytes":2097152,"whenFull":"dropOldest","mirrorToConsole":true}}"#).unwrap();
        assert_eq!(cfg.logs.when_full, WhenFull::DropOldest);
        assert!(cfg.logs.mirror_to_console);
        for bad in ["1048576", "2000000000"] {
            assert_eq!(
                err_field(&format!(
                    r#"{{"imageName":"i","command":["/a"],"logs":{{"bufferBytes":{bad}}}}}"#
                )),
                "logs.bufferBytes"
            );
        }
        assert_eq!(
            err_field(r#"{"imageName":"i","command":["/a"],"logs":{"whenFull":"drop"}}"#),
            "logs.whenFull"
        );
    }

    #[test]
    fn exit_policy() {
        let base = r#"{"imageName":"i","command":["/a"],"onApplicationExit":"#;
        assert_eq!(
            img(&format!(r#"{base}"restart"}}"#))
                .unwrap()
                .on_application_exit,
            ExitPolicy::Restart
        );
        assert_eq!(
            err_field(&format!(r#"{base}"reboot"}}"#)),
            "onApplicationExit"
        );
    }

    #[test]
    fn run_request_payload_limit_counts_utf8_bytes() {
        let exact = "é".repeat(MAX_RUN_HOOK_PAYLOAD / 2);
        let body = serde_json::json!({"microvmId":"m","runHookPayload":exact}).to_string();
        let run = RunRequest::parse(body.as_bytes()).expect("16384 bytes is allowed");
        assert_eq!(run.run_hook_payload, exact);
        let over = format!("{exact}x");
        let body = serde_json::json!({"microvmId":"m","runHookPayload":over}).to_string();
        assert!(matches!(
            RunRequest::parse(body.as_bytes()),
            Err(RequestError::TooLarge(f)) if f.field == "runHookPayload"
        ));
    }

    #[test]
    fn run_request_fields() {
        let err = |b: &str| match RunRequest::parse(b.as_bytes()) {
            Err(RequestError::Invalid(f)) => f.field,
            other => panic!("expected 400 for {b}: {other:?}"),
        };
        assert_eq!(err("{}"), "microvmId");
        assert_eq!(err(r#"{"microvmId":""}"#), "microvmId");
        assert_eq!(err(r#"{"microvmId":5}"#), "microvmId");
        assert_eq!(
            err(r#"{"microvmId":"m","runHookPayload":1}"#),
            "runHookPayload"
        );
        assert_eq!(err(r#"{"microvmId":"m","extra":1}"#), "extra");
        assert_eq!(err(r#"{"microvmId":"m","entropy":"!!"}"#), "entropy");
        assert_eq!(err(r#"{"microvmId":"m","entropy":"AAAA"}"#), "entropy");
        assert_eq!(
            err(r#"{"microvmId":"m","clock":{"unixTimeNanos":-1}}"#),
            "clock.unixTimeNanos"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","idlePolicy":{"maxIdleDurationSeconds":0}}"#),
            "idlePolicy.maxIdleDurationSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","maximumDurationInSeconds":0}"#),
            "maximumDurationInSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","maximumDurationInSeconds":28801}"#),
            "maximumDurationInSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","credentials":{"accessKeyId":"a"}}"#),
            "credentials"
        );
        assert_eq!(err("not json"), "(body)");
        assert_eq!(err("[]"), "(body)");
    }

    #[test]
    fn run_request_full_envelope_and_app_body() {
        let entropy = "A".repeat(44); // 33 bytes
        let body = format!(
            r#"{{"microvmId":"mvm-1","runHookPayload":"p\"q\n","logging":{{"disabled":{{}}}},
            "idlePolicy":{{"maxIdleDurationSeconds":900,"suspendedDurationSeconds":300,"autoResumeEnabled":true}},
            "maximumDurationInSeconds":14400,"region":"us-east-1",
            "credentials":{{"accessKeyId":"AK","secretAccessKey":"SK","sessionToken":"T","expiration":"2026-11-21T12:00:00Z"}},
            "clock":{{"unixTimeNanos":1795000000000000000}},"entropy":"{entropy}"}}"#
        );
        let run = RunRequest::parse(body.as_bytes()).expect("valid");
        assert_eq!(run.maximum_duration, Some(Duration::from_secs(14400)));
        assert_eq!(run.fresh.entropy.as_ref().map(Vec::len), Some(33));
        assert_eq!(
            run.fresh.clock,
            Some(Clock {
                unix_time_nanos: 1_795_000_000_000_000_000
            })
        );
        let app: serde_json::Value = serde_json::from_slice(&run.app_body()).unwrap();
        assert_eq!(
            app,
            serde_json::json!({"microvmId":"mvm-1","runHookPayload":"p\"q\n"})
        );
        assert!(!format!("{:?}", run.fresh.credentials).contains("SK"));
    }

    #[test]
    fn empty_bodies() {
        assert!(parse_empty(b"").is_ok());
        assert!(parse_empty(b" {} ").is_ok());
        assert!(parse_empty(b"{\"x\":1}").is_err());
        assert_eq!(parse_resume(b"").unwrap(), Freshness::default());
        assert!(matches!(
            parse_resume(br#"{"clock":{"unixTimeNanos":5}}"#),
            Ok(Freshness {
                clock: Some(Clock { unix_time_nanos: 5 }),
                ..
            })
        ));
    }
}
