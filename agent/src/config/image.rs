//! The image config (DESIGN.md contract 1): `/etc/microvm/image.json`.

use super::json::{from_json_objects, ConfigError, FieldError};
use microvm_protocol::limits;
use microvm_protocol::run::Logging;
use microvm_protocol::status::WhenFull;
use microvm_protocol::Hook;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Toggle {
    Enabled,
    #[default]
    Disabled,
}

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

    /// Whether the agent calls the application for any hook at all.
    pub fn any_enabled(&self) -> bool {
        Hook::ALL
            .into_iter()
            .any(|h| self.setting(h).0 == Toggle::Enabled)
    }

    pub fn port(&self) -> u16 {
        // validate() guarantees the range; the fallback is never taken for a valid config.
        u16::try_from(self.port).unwrap_or(microvm_protocol::ports::DEFAULT_HOOKS)
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
            let (group, range) = if hook.is_image_build() {
                (
                    "microvmImageHooks",
                    limits::IMAGE_BUILD_HOOK_TIMEOUT_SECONDS,
                )
            } else {
                ("microvmHooks", limits::RUNTIME_HOOK_TIMEOUT_SECONDS)
            };
            let secs = timeout.as_secs();
            if !range.contains(&secs) {
                return Err(FieldError::new(
                    format!("hooks.{group}.{}TimeoutInSeconds", hook.name()),
                    format!(
                        "must be {}-{} seconds, got {secs}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn default_hooks_port() -> u32 {
    u32::from(microvm_protocol::ports::DEFAULT_HOOKS)
}
fn default_image_build_timeout() -> u64 {
    60
}
fn default_runtime_timeout() -> u64 {
    5
}

/// AWS CreateLogGroup / CreateLogStream name rules, for the union found at `at`.
pub fn validate_logging(logging: &Logging, at: &str) -> Result<(), FieldError> {
    {
        let Logging::CloudWatch(cw) = logging else {
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
            // The service counts characters, not bytes (a found property case: 512
            // non-ASCII characters were refused).
            let ok = (1..=512).contains(&s.chars().count()) && !s.contains([':', '*']);
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
    /// The application's memory limit (its cgroup's `memory.max`), in MiB. Without
    /// it the application may use the guest's memory, and the OOM killer, when it
    /// must kill, kills the application and never the agent.
    #[serde(rename = "memoryLimitMiB")]
    pub memory_limit_mib: Option<u64>,
    /// The metadata service, like EC2's `MetadataOptions`.
    #[serde(default)]
    pub metadata: microvm_protocol::status::MetadataOptions,
    /// Who the application runs as: `name`, `uid`, `name:group` or `uid:gid`, names
    /// from the image's /etc/passwd and /etc/group. Absent: root.
    pub user: Option<String>,
    /// The service model's `additionalOsCapabilities`: `["ALL"]` or nothing.
    #[serde(default)]
    pub additional_os_capabilities: Vec<Capability>,
    /// The service model's `resources` (a list of at most one): the memory the host
    /// gives the guest at least. The agent only checks it; the host reads it.
    #[serde(default)]
    pub resources: Vec<Resources>,
}

/// The service model's `Capability` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Capability {
    #[serde(rename = "ALL")]
    All,
}

/// The service model's `Resources`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(rename = "minimumMemoryInMiB")]
    pub minimum_memory_in_mib: u32,
}

/// The service model's `EnvironmentVariableMap` limits.
pub const MAX_ENV_VARS: usize = 100;
pub const MAX_ENV_KEY_CHARS: usize = 256;
pub const MAX_ENV_VALUE_CHARS: usize = 4096;

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, FieldError> {
        let cfg: ImageConfig =
            from_json_objects(bytes, &["command", "additionalOsCapabilities", "resources"])?;
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
        use crate::supervisor::cgroup::MIN_LIMIT_MIB;
        let hops = self.metadata.http_put_response_hop_limit;
        if !(1..=64).contains(&hops) {
            return Err(FieldError::new(
                "metadata.httpPutResponseHopLimit",
                format!("must be 1-64, got {hops}"),
            ));
        }
        if self.hooks.port == 80
            && self.metadata.http_endpoint == microvm_protocol::status::HttpEndpoint::Enabled
        {
            // The metadata service listens on 169.254.169.254:80 inside the guest, and
            // Linux refuses a wildcard bind of a port a specific address listens on.
            return Err(FieldError::new(
                "hooks.port",
                "80 is taken in the guest by the metadata service (169.254.169.254:80): pick another port, or set metadata.httpEndpoint to disabled",
            ));
        }
        if let Some(m) = self.memory_limit_mib {
            // Shifted into bytes for memory.max: keep it far from overflow.
            if !(MIN_LIMIT_MIB..=1 << 30).contains(&m) {
                return Err(FieldError::new(
                    "memoryLimitMiB",
                    format!("must be {MIN_LIMIT_MIB}-{} MiB, got {m}", 1u64 << 30),
                ));
            }
        }
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
        if self.env.len() > MAX_ENV_VARS {
            return Err(FieldError::new(
                "env",
                format!("at most {MAX_ENV_VARS} variables, got {}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            let chars = k.chars().count();
            if !(1..=MAX_ENV_KEY_CHARS).contains(&chars)
                || k.contains(['=', '\0'])
                || k.chars().any(char::is_whitespace)
            {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    format!("variable names must be 1-{MAX_ENV_KEY_CHARS} characters, without blanks, '=' or NUL"),
                ));
            }
            if v.contains('\0') {
                return Err(FieldError::new(format!("env.{k}"), "must not contain NUL"));
            }
            if v.chars().count() > MAX_ENV_VALUE_CHARS {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    format!("at most {MAX_ENV_VALUE_CHARS} characters"),
                ));
            }
        }
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 256
                && u.split(':').count() <= 2
                && !u.split(':').any(str::is_empty)
                && !u.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(FieldError::new(
                    "user",
                    "must be name, uid, name:group or uid:gid (at most 256 characters, no blanks)",
                ));
            }
        }
        if self.additional_os_capabilities.len() > 1 {
            return Err(FieldError::new(
                "additionalOsCapabilities",
                "takes [\"ALL\"] or nothing",
            ));
        }
        match self.resources.as_slice() {
            [] => {}
            [r] if limits::MINIMUM_MEMORY_MIB.contains(&r.minimum_memory_in_mib) => {}
            [r] => {
                return Err(FieldError::new(
                    "resources[0].minimumMemoryInMiB",
                    format!(
                        "must be {}-{} MiB, got {}",
                        limits::MINIMUM_MEMORY_MIB.start(),
                        limits::MINIMUM_MEMORY_MIB.end(),
                        r.minimum_memory_in_mib
                    ),
                ))
            }
            _ => {
                return Err(FieldError::new(
                    "resources",
                    "takes at most one entry (the service model's ResourcesList)",
                ))
            }
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(FieldError::new("workingDir", "must be an absolute path"));
            }
        }
        self.hooks.validate()?;
        if let Some(l) = &self.logging {
            validate_logging(l, "logging")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::run::{CloudWatchLogging, Empty};

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
    fn env_follows_the_service_models_limits() {
        let with_env =
            |env: serde_json::Value| format!(r#"{{"imageName":"i","command":["/a"],"env":{env}}}"#);
        let many = |n: usize| {
            serde_json::Value::Object(
                (0..n)
                    .map(|i| (format!("K{i}"), serde_json::Value::from("v")))
                    .collect(),
            )
        };
        assert!(img(&with_env(many(100))).is_ok());
        assert_eq!(err_field(&with_env(many(101))), "env");
        let key256 = "K".repeat(256);
        assert!(img(&with_env(serde_json::json!({ key256.clone(): "v" }))).is_ok());
        let key257 = "K".repeat(257);
        assert_eq!(
            err_field(&with_env(serde_json::json!({ key257.clone(): "v" }))),
            format!("env.{key257}")
        );
        assert_eq!(
            err_field(&with_env(serde_json::json!({"A B": "v"}))),
            "env.A B"
        );
        assert_eq!(
            err_field(&with_env(serde_json::json!({"A\tB": "v"}))),
            "env.A\tB"
        );
        // Values are counted in characters, as the service counts them.
        assert!(img(&with_env(serde_json::json!({"V": "é".repeat(4096)}))).is_ok());
        assert_eq!(
            err_field(&with_env(serde_json::json!({"V": "x".repeat(4097)}))),
            "env.V"
        );
        assert!(img(&with_env(serde_json::json!({"V": ""}))).is_ok());
    }

    #[test]
    fn user_capabilities_and_resources() {
        let cfg = |extra: &str| img(&format!(r#"{{"imageName":"i","command":["/a"]{extra}}}"#));
        let c = cfg("").unwrap();
        assert_eq!(c.user, None);
        assert!(c.additional_os_capabilities.is_empty());
        assert!(c.resources.is_empty());
        for ok in ["app", "1000", "app:staff", "1000:1000", "0"] {
            assert_eq!(
                cfg(&format!(r#","user":"{ok}""#)).unwrap().user.as_deref(),
                Some(ok)
            );
        }
        for bad in ["", ":", "app:", ":staff", "a:b:c", "a b", "a\n"] {
            assert_eq!(
                cfg(&format!(r#","user":"{bad}""#)).unwrap_err().field,
                "user",
                "{bad:?}"
            );
        }
        let all = cfg(r#","additionalOsCapabilities":["ALL"]"#).unwrap();
        assert_eq!(all.additional_os_capabilities, [Capability::All]);
        assert!(cfg(r#","additionalOsCapabilities":[]"#).is_ok());
        assert_eq!(
            cfg(r#","additionalOsCapabilities":["SYS_TIME"]"#)
                .unwrap_err()
                .field,
            "additionalOsCapabilities[0]"
        );
        assert_eq!(
            cfg(r#","additionalOsCapabilities":"ALL""#)
                .unwrap_err()
                .field,
            "additionalOsCapabilities"
        );
        assert_eq!(
            cfg(r#","additionalOsCapabilities":["ALL","ALL"]"#)
                .unwrap_err()
                .field,
            "additionalOsCapabilities"
        );
        let r = cfg(r#","resources":[{"minimumMemoryInMiB":256}]"#).unwrap();
        assert_eq!(r.resources[0].minimum_memory_in_mib, 256);
        assert_eq!(
            cfg(r#","resources":[{"minimumMemoryInMiB":32}]"#)
                .unwrap_err()
                .field,
            "resources[0].minimumMemoryInMiB"
        );
        assert_eq!(
            cfg(r#","resources":[{"minimumMemoryInMiB":256},{"minimumMemoryInMiB":512}]"#)
                .unwrap_err()
                .field,
            "resources"
        );
        // The model's form is a list: an object is refused, naming it.
        assert_eq!(
            cfg(r#","resources":{"minimumMemoryInMiB":256}"#)
                .unwrap_err()
                .field,
            "resources"
        );
        assert_eq!(
            cfg(r#","resources":[{"minimumMemoryInMiB":256,"cpus":2}]"#)
                .unwrap_err()
                .field,
            "resources[0].cpus"
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
        // 80 belongs to the metadata service unless the image turns it off.
        assert_eq!(err_field(&with_hooks(r#"{"port":80}"#)), "hooks.port");
        let off = r#"{"imageName":"i","command":["/a"],"hooks":{"port":80},"metadata":{"httpEndpoint":"disabled"}}"#;
        assert_eq!(img(off).expect("valid").hooks.port(), 80);
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
    fn memory_limit() {
        let cfg = img(r#"{"imageName":"i","command":["/a"],"memoryLimitMiB":64}"#).unwrap();
        assert_eq!(cfg.memory_limit_mib, Some(64));
        let cfg = img(r#"{"imageName":"i","command":["/a"]}"#).unwrap();
        assert_eq!(cfg.memory_limit_mib, None);
        for bad in ["0", "7", "1073741825", "-1", "\"64\""] {
            assert_eq!(
                err_field(&format!(
                    r#"{{"imageName":"i","command":["/a"],"memoryLimitMiB":{bad}}}"#
                )),
                "memoryLimitMiB",
                "{bad}"
            );
        }
    }

    #[test]
    fn metadata_options() {
        use microvm_protocol::status::{HttpEndpoint, HttpTokens};
        let cfg = img(r#"{"imageName":"i","command":["/a"]}"#).unwrap();
        assert_eq!(cfg.metadata.http_endpoint, HttpEndpoint::Enabled);
        assert_eq!(cfg.metadata.http_tokens, HttpTokens::Required);
        assert_eq!(cfg.metadata.http_put_response_hop_limit, 1);
        let cfg = img(r#"{"imageName":"i","command":["/a"],"metadata":{"httpEndpoint":"disabled","httpTokens":"optional","httpPutResponseHopLimit":64}}"#).unwrap();
        assert_eq!(cfg.metadata.http_endpoint, HttpEndpoint::Disabled);
        assert_eq!(cfg.metadata.http_tokens, HttpTokens::Optional);
        for (bad, field) in [
            (
                r#"{"httpPutResponseHopLimit":0}"#,
                "metadata.httpPutResponseHopLimit",
            ),
            (
                r#"{"httpPutResponseHopLimit":65}"#,
                "metadata.httpPutResponseHopLimit",
            ),
            (r#"{"httpTokens":"maybe"}"#, "metadata.httpTokens"),
            (r#"{"hops":1}"#, "metadata.hops"),
        ] {
            assert_eq!(
                err_field(&format!(
                    r#"{{"imageName":"i","command":["/a"],"metadata":{bad}}}"#
                )),
                field,
                "{bad}"
            );
        }
    }
}
