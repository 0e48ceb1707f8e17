//! CreateMicrovmImage: an image built from a local code artifact (`file://` a
//! directory or a .zip) on one of the local Debian bases, the way the platform
//! builds one: the code installed over the base (`rootfs/image.sh`), the image
//! booted, its image-build hooks (`/ready`, `/validate`) answered and a snapshot
//! saved, from which every MicroVM of the image then starts.
//!
//! The artifact carries its image config (contract 1) as `image.json` at its root
//! (the command, user, working directory); the request's members the config also
//! has (`hooks`, `environmentVariables`, `logging`, `resources`,
//! `additionalOsCapabilities`) override it, and the image's name is the request's.
//! One build runs at a time (each boots a guest); the others wait as PENDING. An
//! image being built, or whose build failed, lives here; a built one is a directory
//! of `--images` like any `make rootfs` output, with its request in `build.json`.

use super::images::{self, BuildState, LocalImage};
use super::wire::{self, ApiError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest an install (`rootfs/image.sh`) may take; the image-build hooks have
/// their own limits (the image's), enforced by the snapshot.
const INSTALL_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The members the request may set in the artifact's image config.
const CONFIG_MEMBERS: [&str; 3] = ["logging", "resources", "additionalOsCapabilities"];
/// The image config's members the agent knows (agent/src/config/image.rs, which
/// refuses any other): an artifact's config is checked against them before the
/// install, not at the guest's first boot.
const AGENT_CONFIG_MEMBERS: [&str; 13] = [
    "imageName",
    "command",
    "env",
    "workingDir",
    "hooks",
    "logging",
    "onApplicationExit",
    "logs",
    "memoryLimitMiB",
    "metadata",
    "user",
    "additionalOsCapabilities",
    "resources",
];
/// CreateMicrovmImage's members: those its image version repeats, and these.
const OWN_MEMBERS: [&str; 2] = ["name", "clientToken"];

/// The builds this endpoint runs or ran without success.
pub struct Builds {
    inner: Mutex<Inner>,
    turn: tokio::sync::Semaphore,
    /// Builds started and not yet finished (shutdown waits for their cleanup).
    active: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Images not (yet) in `--images`: building, or failed. By name.
    images: HashMap<String, LocalImage>,
    /// clientToken -> (image name, its ARN, the request without its token). A name
    /// given anew (after a failed build) drops the tokens of the image it named.
    tokens: HashMap<String, (String, String, Map<String, Value>)>,
}

impl Inner {
    /// The image a repeated clientToken made (with the same request), if any.
    fn repeated(
        &self,
        token: Option<&str>,
        request: &Map<String, Value>,
    ) -> Result<Option<String>, ApiError> {
        let Some(t) = token else { return Ok(None) };
        match self.tokens.get(t) {
            None => Ok(None),
            Some((name, _, r)) if r == request => Ok(Some(name.clone())),
            Some((name, arn, _)) => Err(ApiError::image_conflict(
                arn,
                format!("clientToken {t} was used with other parameters (image {name}): repeat the request as it was, or use a new token"),
            )),
        }
    }
}

/// What [`Builds::admit`] made of a request.
#[derive(Debug)]
pub enum Admitted {
    /// A new image, PENDING: its build is to be started.
    New(Box<LocalImage>),
    /// The image (by name) an identical request with the same token made.
    Repeat(String),
}

/// A build under way, for the endpoint's shutdown (see [`Builds::started`]).
pub struct Active(std::sync::Arc<super::Server>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.builds.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A checked CreateMicrovmImage: what its build needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    /// The base's directory (`<images>/base/<name>`, a `rootfs/base.sh` output).
    pub base: PathBuf,
    /// The code artifact: a directory or a .zip.
    pub code: PathBuf,
    pub request: Map<String, Value>,
}

impl Default for Builds {
    fn default() -> Self {
        Builds {
            inner: Mutex::new(Inner::default()),
            turn: tokio::sync::Semaphore::new(1),
            active: AtomicUsize::new(0),
        }
    }
}

impl Builds {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image of that name being built or whose build failed.
    pub fn get(&self, name: &str) -> Option<LocalImage> {
        self.inner().images.get(name).cloned()
    }

    /// Every image being built or whose build failed, by name.
    pub fn all(&self) -> Vec<LocalImage> {
        self.inner().images.values().cloned().collect()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// No build starts from now on (the endpoint stops); those waiting fail.
    pub fn close(&self) {
        self.turn.close();
    }

    /// Count a build as under way until the guard drops, whatever ends it. Taken
    /// before the build's task is spawned, so a shutdown never misses one.
    pub fn started(server: &std::sync::Arc<super::Server>) -> Active {
        server.builds.active.fetch_add(1, Ordering::SeqCst);
        Active(server.clone())
    }

    /// The image a repeated clientToken made (with the same request), if any.
    pub fn repeat(
        &self,
        token: Option<&str>,
        request: &Map<String, Value>,
    ) -> Result<Option<String>, ApiError> {
        self.inner().repeated(token, request)
    }

    /// Record a new image as PENDING, unless its name is taken: by an image in
    /// `images_root` or one being built. A failed one gives its name up. A token
    /// repeated meanwhile (two identical requests at once) names the image its
    /// first request made.
    pub fn admit(
        &self,
        image: LocalImage,
        token: Option<String>,
        images_root: &Path,
    ) -> Result<Admitted, ApiError> {
        let mut inner = self.inner();
        let mut request = image.request.clone().unwrap_or_default();
        request.remove("clientToken");
        if let Some(name) = inner.repeated(token.as_deref(), &request)? {
            return Ok(Admitted::Repeat(name));
        }
        let busy = inner
            .images
            .get(&image.name)
            .is_some_and(|i| i.state != BuildState::Failed);
        // Under the lock: a build that ends renames its image into place before it
        // leaves the map, so one of the two always shows the name taken.
        let on_disk = images_root.join(&image.name).exists();
        if on_disk || busy {
            let dir = images_root.join(&image.name);
            let why = if busy {
                format!("an image named {} is being built", image.name)
            } else if crate::vm::Image::open(&dir).is_ok() {
                format!(
                    "an image named {} exists already ({}): choose another name, or remove that directory",
                    image.name,
                    dir.display()
                )
            } else {
                format!(
                    "{} is taken by a directory that is not an image: choose another name",
                    dir.display()
                )
            };
            return Err(ApiError::image_conflict(&image.arn, why));
        }
        inner.tokens.retain(|_, (name, _, _)| *name != image.name);
        if let Some(t) = token {
            inner
                .tokens
                .insert(t, (image.name.clone(), image.arn.clone(), request));
        }
        inner.images.insert(image.name.clone(), image.clone());
        Ok(Admitted::New(Box::new(image)))
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LocalImage)) {
        if let Some(i) = self.inner().images.get_mut(name) {
            f(i);
            i.updated_ms = wire::now_ms();
        }
    }

    /// Build `job`'s image, in turn, then report: a built image leaves this list for
    /// `--images`; a failed one stays, FAILED with its reason.
    pub async fn run(active: Active, job: Job, builder: PathBuf, images: PathBuf, logs: PathBuf) {
        let me = &active.0.builds;
        let name = job.name.clone();
        // Held until the build is over: one at a time.
        let turn = me.turn.acquire().await;
        let outcome = if turn.is_err() || crate::signals::stopping() {
            Err("the local endpoint shut down before the build began".to_string())
        } else {
            me.update(&name, |i| i.state = BuildState::InProgress);
            let (build_id, created) = me
                .get(&name)
                .map_or((String::new(), 0), |i| (i.build_id, i.created_ms));
            tokio::task::spawn_blocking(move || {
                build(&job, &build_id, created, &builder, &images, &logs)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the build stopped: {e}")))
        };
        drop(turn);
        match outcome {
            // Now in `--images`: found there from here on.
            Ok(()) => {
                me.inner().images.remove(&name);
            }
            Err(why) => me.update(&name, |i| {
                i.state = BuildState::Failed;
                i.reason = Some(why);
            }),
        }
    }
}

/// The service's word for a member that fails a constraint.
fn constraint(at: &str, what: &str) -> String {
    format!("Value at '{at}' failed to satisfy constraint: Member must {what}")
}

fn length(errors: &mut Vec<String>, at: &str, v: Option<&Value>, min: usize, max: usize) {
    let Some(v) = v else { return };
    match v.as_str().map(|s| s.chars().count()) {
        Some(n) if (min..=max).contains(&n) => {}
        Some(_) => errors.push(constraint(
            at,
            &format!("have length between {min} and {max}"),
        )),
        None => errors.push(constraint(at, "be a string")),
    }
}

fn non_blank(errors: &mut Vec<String>, at: &str, v: Option<&Value>, max: usize) {
    length(errors, at, v, 1, max);
    if v.and_then(Value::as_str)
        .is_some_and(|s| s.chars().any(char::is_whitespace))
    {
        errors.push(constraint(
            at,
            "satisfy regular expression pattern: [^\\s]+",
        ));
    }
}

fn list<'a>(errors: &mut Vec<String>, at: &str, v: Option<&'a Value>, max: usize) -> &'a [Value] {
    match v {
        None => &[],
        Some(Value::Array(a)) if a.len() <= max => a,
        Some(Value::Array(_)) => {
            errors.push(constraint(
                at,
                &format!("have length less than or equal to {max}"),
            ));
            &[]
        }
        Some(_) => {
            errors.push(constraint(at, "be a list"));
            &[]
        }
    }
}

fn integer(errors: &mut Vec<String>, at: &str, v: Option<&Value>, min: i64, max: i64) {
    let Some(v) = v else { return };
    if !v.as_i64().is_some_and(|n| (min..=max).contains(&n)) {
        errors.push(constraint(
            at,
            &format!("be an integer between {min} and {max}"),
        ));
    }
}

/// An object whose members are all among `known`, or an error naming the first
/// stranger.
fn object<'a>(
    errors: &mut Vec<String>,
    at: &str,
    v: Option<&'a Value>,
    known: &[&str],
) -> Option<&'a Map<String, Value>> {
    let v = v?;
    let Some(m) = v.as_object() else {
        errors.push(constraint(at, "be a structure"));
        return None;
    };
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        errors.push(format!(
            "Unknown member '{k}' at '{at}': it has {}",
            known.join(", ")
        ));
    }
    Some(m)
}

/// The model's `Hooks`: states ENABLED or DISABLED, the port 1-65535, runtime
/// limits 1-60 s, image-build limits 1-3600 s.
fn hooks(errors: &mut Vec<String>, v: Option<&Value>) {
    let Some(h) = object(
        errors,
        "hooks",
        v,
        &["port", "microvmHooks", "microvmImageHooks"],
    ) else {
        return;
    };
    integer(errors, "hooks.port", h.get("port"), 1, 65535);
    for (member, hooks, max) in [
        (
            "microvmHooks",
            &["run", "resume", "suspend", "terminate"][..],
            60,
        ),
        ("microvmImageHooks", &["ready", "validate"][..], 3600),
    ] {
        let at = format!("hooks.{member}");
        let known: Vec<String> = hooks
            .iter()
            .flat_map(|h| [h.to_string(), format!("{h}TimeoutInSeconds")])
            .collect();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let Some(m) = object(errors, &at, h.get(member), &known) else {
            continue;
        };
        for hook in hooks {
            if let Some(s) = m.get(*hook) {
                if s != "ENABLED" && s != "DISABLED" {
                    errors.push(constraint(
                        &format!("{at}.{hook}"),
                        "satisfy enum value set: [DISABLED, ENABLED]",
                    ));
                }
            }
            let limit = format!("{hook}TimeoutInSeconds");
            integer(errors, &format!("{at}.{limit}"), m.get(&limit), 1, max);
        }
    }
}

/// A map of strings with keys and values of these lengths.
fn string_map(
    errors: &mut Vec<String>,
    at: &str,
    v: Option<&Value>,
    max_entries: usize,
    keys: (usize, usize),
    values: usize,
) {
    let Some(v) = v else { return };
    let Some(m) = v.as_object() else {
        errors.push(constraint(at, "be a map"));
        return;
    };
    if m.len() > max_entries {
        errors.push(constraint(
            at,
            &format!("have length less than or equal to {max_entries}"),
        ));
    }
    for (k, x) in m {
        if !(keys.0..=keys.1).contains(&k.chars().count()) {
            errors.push(constraint(
                &format!("{at}.key"),
                &format!("have length between {} and {}", keys.0, keys.1),
            ));
        }
        length(errors, &format!("{at}.{k}"), Some(x), 0, values);
    }
}

/// CreateMicrovmImage's constraints, by the model, in the service's words (botocore
/// checks types and minimums before sending; the service checks the rest).
pub fn check(r: &Map<String, Value>) -> Vec<String> {
    let mut errors = Vec::new();
    let members = || images::VERSION_MEMBERS.iter().chain(&OWN_MEMBERS);
    if let Some(k) = r.keys().find(|k| !members().any(|m| m == k)) {
        let all: Vec<&str> = members().copied().collect();
        errors.push(format!(
            "Unknown member '{k}': CreateMicrovmImage has {}",
            all.join(", ")
        ));
    }
    for required in ["baseImageArn", "buildRoleArn", "codeArtifact", "name"] {
        if r.get(required).is_none_or(Value::is_null) {
            errors.push(format!(
                "Value null at '{required}' failed to satisfy constraint: Member must not be null"
            ));
        }
    }
    length(&mut errors, "name", r.get("name"), 1, 64);
    if r.get("name").and_then(Value::as_str).is_some_and(|n| {
        !n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        errors.push(constraint(
            "name",
            "satisfy regular expression pattern: [a-zA-Z0-9-_]+",
        ));
    }
    if r.get("name").is_some_and(|n| n == "base") {
        errors.push(
            "name base: locally --images/base holds the managed images (the bases): choose another name".into(),
        );
    }
    non_blank(&mut errors, "baseImageArn", r.get("baseImageArn"), 2048);
    non_blank(
        &mut errors,
        "baseImageVersion",
        r.get("baseImageVersion"),
        2048,
    );
    if r.get("buildRoleArn").is_some_and(|v| {
        !crate::validate::is_role_arn(v) || v.as_str().is_some_and(|s| s.len() > 2048)
    }) {
        errors.push(constraint(
            "buildRoleArn",
            "satisfy regular expression pattern: arn:aws[a-z\\-]*:iam::[0-9]{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
        ));
    }
    length(
        &mut errors,
        "description",
        r.get("description"),
        0,
        usize::MAX,
    );
    if let Some(c) = object(&mut errors, "codeArtifact", r.get("codeArtifact"), &["uri"]) {
        if c.is_empty() {
            errors.push(constraint(
                "codeArtifact",
                "have exactly one member set (uri)",
            ));
        }
        non_blank(&mut errors, "codeArtifact.uri", c.get("uri"), 2048);
        if c.get("uri")
            .and_then(Value::as_str)
            .is_some_and(|u| u.contains(' '))
        {
            if let Some(last) = errors.last_mut() {
                last.push_str(" (a file URI writes a space as %20)");
            }
        }
    }
    if let Some(l) = r.get("logging") {
        let mut logging = Vec::new();
        crate::validate::logging(&mut logging, l);
        errors.extend(logging);
    }
    for (i, c) in list(
        &mut errors,
        "egressNetworkConnectors",
        r.get("egressNetworkConnectors"),
        1,
    )
    .iter()
    .enumerate()
    {
        length(
            &mut errors,
            &format!("egressNetworkConnectors.{i}"),
            Some(c),
            1,
            2048,
        );
    }
    for (i, c) in list(
        &mut errors,
        "cpuConfigurations",
        r.get("cpuConfigurations"),
        usize::MAX,
    )
    .iter()
    .enumerate()
    {
        let at = format!("cpuConfigurations.{i}");
        if let Some(m) = object(&mut errors, &at, Some(c), &["architecture"]) {
            if !m
                .get("architecture")
                .and_then(Value::as_str)
                .is_some_and(|a| images::ARCHITECTURES.contains(&a))
            {
                errors.push(constraint(
                    &format!("{at}.architecture"),
                    &format!(
                        "satisfy enum value set: [{}]",
                        images::ARCHITECTURES.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, c) in list(&mut errors, "resources", r.get("resources"), 1)
        .iter()
        .enumerate()
    {
        let at = format!("resources.{i}");
        if let Some(m) = object(&mut errors, &at, Some(c), &["minimumMemoryInMiB"]) {
            let at = format!("{at}.minimumMemoryInMiB");
            match m.get("minimumMemoryInMiB") {
                None => errors.push(format!(
                    "Value null at '{at}' failed to satisfy constraint: Member must not be null"
                )),
                v => integer(&mut errors, &at, v, 64, 1_048_576),
            }
        }
    }
    // The model sets no maximum; its one value makes a second meaningless, and the
    // agent refuses one.
    for (i, c) in list(
        &mut errors,
        "additionalOsCapabilities",
        r.get("additionalOsCapabilities"),
        1,
    )
    .iter()
    .enumerate()
    {
        if c != "ALL" {
            errors.push(constraint(
                &format!("additionalOsCapabilities.{i}"),
                "satisfy enum value set: [ALL]",
            ));
        }
    }
    hooks(&mut errors, r.get("hooks"));
    string_map(
        &mut errors,
        "environmentVariables",
        r.get("environmentVariables"),
        100,
        (1, 256),
        4096,
    );
    env_names(
        &mut errors,
        "environmentVariables",
        r.get("environmentVariables"),
    );
    non_blank(
        &mut errors,
        "kmsKeyIdentifier",
        r.get("kmsKeyIdentifier"),
        2048,
    );
    string_map(
        &mut errors,
        "tags",
        r.get("tags"),
        usize::MAX,
        (1, 128),
        256,
    );
    length(&mut errors, "clientToken", r.get("clientToken"), 1, 128);
    errors
}

/// What a checked request names on this machine: its base (`ResourceNotFound` if
/// no such local base) and its code (a `file://` directory or .zip).
pub fn resolve(r: &Map<String, Value>, images_root: &Path, region: &str) -> Result<Job, ApiError> {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let base_arn = s("baseImageArn");
    let prefix = format!("arn:aws:lambda:{region}:aws:managed-microvm-image:");
    let base = base_arn
        .strip_prefix(&prefix)
        .filter(|n| images::valid_name(n))
        .map(|n| images_root.join("base").join(n))
        .filter(|d| d.join("base.json").is_file())
        .ok_or_else(|| {
            ApiError::not_found("ManagedMicrovmImage", base_arn).with_message(format!(
                "managed MicroVM image {base_arn} not found: the local ones are {prefix}<name> for each base `make base-<name>` built in {}",
                images_root.join("base").display()
            ))
        })?;
    if let Some(v) = r.get("baseImageVersion").and_then(Value::as_str) {
        if v != images::VERSION {
            return Err(ApiError::not_found(
                "ManagedMicrovmImageVersion",
                &format!("{base_arn}:{v}"),
            ));
        }
    }
    if r.get("cpuConfigurations")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["architecture"] != "X86_64"))
    {
        return Err(ApiError::validation(
            "cpuConfigurations: the local bases are x86_64 only (rootfs/base.sh): an ARM_64 build cannot be made here",
        ));
    }
    let uri = r
        .get("codeArtifact")
        .and_then(|c| c.get("uri"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(path) = uri
        .strip_prefix("file://")
        .and_then(wire::percent_decode)
        .filter(|p| !p.contains('\0'))
    else {
        return Err(ApiError::validation(format!(
            "codeArtifact.uri {uri}: locally a code artifact is file:///ABSOLUTE/PATH (percent-encoded where it must be), a directory or a .zip"
        )));
    };
    let code = PathBuf::from(path);
    let usable = code.is_absolute()
        && (code.is_dir()
            || (code.is_file()
                && code
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("zip"))));
    if !usable {
        return Err(ApiError::validation(format!(
            "codeArtifact.uri {uri}: no directory or .zip file at that absolute path"
        )));
    }
    Ok(Job {
        name: s("name").to_string(),
        base,
        code,
        request: r.clone(),
    })
}

/// `over`'s members over `base`'s, objects merged member by member (a request's
/// `hooks: {microvmHooks: {run: ENABLED}}` keeps the artifact's port and the rest).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The image config of the build: the artifact's own (`image.json`, which must give
/// the command), with the request's members over it and the image's name.
pub fn image_config(artifact: &Value, request: &Map<String, Value>) -> Result<Value, String> {
    let mut config = match artifact {
        Value::Object(m) => m.clone(),
        _ => return Err("the code artifact's image.json is not a JSON object".into()),
    };
    if config
        .get("command")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return Err(
            "the code artifact's image.json has no \"command\" (the application to start, e.g. [\"/usr/bin/python3\", \"/app/app.py\"])"
                .into(),
        );
    }
    if let Some(k) = config
        .keys()
        .find(|k| !AGENT_CONFIG_MEMBERS.contains(&k.as_str()))
    {
        return Err(format!(
            "the code artifact's image.json has \"{k}\", which the agent does not know: an image config has {}",
            AGENT_CONFIG_MEMBERS.join(", ")
        ));
    }
    config.insert(
        "imageName".into(),
        request.get("name").cloned().unwrap_or(Value::Null),
    );
    if let Some(h) = request.get("hooks") {
        merge(config.entry("hooks").or_insert(Value::Null), h);
    }
    for k in CONFIG_MEMBERS {
        if let Some(v) = request.get(k) {
            config.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Object(vars)) = request.get("environmentVariables") {
        let mut env = match config.remove("env") {
            Some(Value::Object(e)) => e,
            None => Map::new(),
            Some(_) => {
                return Err("the code artifact's image.json: \"env\" is not an object".into())
            }
        };
        for (k, v) in vars {
            env.insert(k.clone(), v.clone());
        }
        config.insert("env".into(), Value::Object(env));
    }
    // What the agent would refuse at boot, found before the install: the merged
    // hooks and environment, the working directory.
    let mut errors = Vec::new();
    hooks(&mut errors, config.get("hooks"));
    string_map(&mut errors, "env", config.get("env"), 100, (1, 256), 4096);
    env_names(&mut errors, "env", config.get("env"));
    match config.get("workingDir") {
        None => {}
        Some(Value::String(d)) if d.starts_with('/') => {}
        Some(d) => errors.push(format!("workingDir {d} is not an absolute path")),
    }
    let strings = config
        .get("command")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            config
                .get("env")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(Map::values),
        );
    if strings.filter_map(Value::as_str).any(|s| s.contains('\0')) {
        errors.push("command and env values may not hold NUL".into());
    }
    // The agent's metadata service listens on 169.254.169.254:80 in the guest
    // unless the config turns it off: the hooks cannot have port 80 too.
    let metadata_on = config
        .get("metadata")
        .and_then(|m| m.get("httpEndpoint"))
        .is_none_or(|e| e != "disabled");
    if config.get("hooks").and_then(|h| h.get("port")) == Some(&json!(80)) && metadata_on {
        errors.push(
            "hooks.port 80 is the guest's metadata service's (169.254.169.254:80): pick another port, or set metadata.httpEndpoint to disabled in image.json".into(),
        );
    }
    if let Some(m) = config.get("memoryLimitMiB").filter(|m| !m.is_null()) {
        if !m.as_u64().is_some_and(|m| (8..=1 << 30).contains(&m)) {
            errors.push(format!(
                "memoryLimitMiB {m}: must be 8 to {} MiB",
                1u64 << 30
            ));
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "the image config (the code artifact's image.json under the request's members): {}",
            errors.join("; ")
        ));
    }
    Ok(Value::Object(config))
}

/// Environment variable names: the model's `[^\s]+`, and no `=` or NUL, which no
/// process environment can hold.
fn env_names(errors: &mut Vec<String>, at: &str, v: Option<&Value>) {
    for k in v.and_then(Value::as_object).into_iter().flat_map(Map::keys) {
        if k.chars().any(char::is_whitespace) {
            errors.push(constraint(
                &format!("{at}.key"),
                "satisfy regular expression pattern: [^\\s]+",
            ));
        } else if k.contains(['=', '\0']) {
            errors.push(format!(
                "{at}: the name {k:?} has '=' or NUL, which no environment variable's name can hold"
            ));
        }
    }
}

/// The artifact's `image.json`: from the directory, or out of the .zip.
fn artifact_config(code: &Path) -> Result<Value, String> {
    let bytes = if code.is_dir() {
        std::fs::read(code.join("image.json")).map_err(|e| {
            format!(
                "{}: {e} (the code artifact carries its image config at its root)",
                code.join("image.json").display()
            )
        })?
    } else {
        let out = std::process::Command::new("unzip")
            .args(["-p"])
            .arg(code)
            .arg("image.json")
            .output()
            .map_err(|e| format!("unzip: {e} (`make setup` installs it)"))?;
        if !out.status.success() {
            return Err(format!(
                "{}: no image.json at the root of the .zip, or not a zip ({}): {}",
                code.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        out.stdout
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the code artifact's image.json: {e}"))
}

/// The last lines of a build's log, for its stateReason.
fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Run `rootfs/image.sh BASE CODE CONFIG OUT`, its output in `log`; stopped when the
/// endpoint stops or the install takes too long.
fn install(builder: &Path, job: &Job, config: &Path, out: &Path, log: &Path) -> Result<(), String> {
    let file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))
    };
    let mut cmd = std::process::Command::new(builder);
    cmd.arg(&job.base)
        .arg(&job.code)
        .arg(config)
        .arg(out)
        .env("ARCH", "x86_64")
        .stdin(std::process::Stdio::null())
        .stdout(file()?)
        .stderr(file()?);
    crate::vm::die_with_parent_by(&mut cmd, libc::SIGKILL);
    let mut child = crate::vm::spawn_kept(cmd).map_err(|e| {
        format!(
            "{}: {e} (serve --image-builder names rootfs/image.sh of this checkout)",
            builder.display()
        )
    })?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => {
                return Err(format!(
                    "installing the code on the base failed ({s}): {}; the whole log: {}",
                    tail(log, 3),
                    log.display()
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {}: {e}", builder.display())),
        }
        let why = if crate::signals::stopping() {
            "the local endpoint shut down"
        } else if t0.elapsed() > INSTALL_LIMIT {
            "the install took longer than 30 minutes"
        } else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        // Its own process group (die_with_parent_by): the script and what it runs,
        // all gone before the caller removes what they were writing.
        let group = i32::try_from(child.id())
            .ok()
            .map(nix::unistd::Pid::from_raw);
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.wait();
        let t0 = Instant::now();
        while group.is_some_and(|g| nix::sys::signal::killpg(g, None).is_ok())
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        return Err(why.into());
    }
}

/// The whole build, in `<images>/.<name>.partial` until it is done and renamed to
/// `<images>/<name>`; nothing half-made stays.
fn build(
    job: &Job,
    build_id: &str,
    created_ms: u64,
    builder: &Path,
    images_root: &Path,
    logs: &Path,
) -> Result<(), String> {
    let partial = images_root.join(format!(".{}.partial", job.name));
    let log = logs.join("build.log");
    let serial = logs.join("serial.log");
    // Whether the partial is this build's: only then is it this build's to remove.
    let mut ours = false;
    let r = (|| {
        std::fs::create_dir_all(logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&serial);
        let config = image_config(&artifact_config(&job.code)?, &job.request)?;
        let config_file = logs.join("image.json");
        std::fs::write(&config_file, format!("{config:#}\n"))
            .map_err(|e| format!("{}: {e}", config_file.display()))?;
        claim(&partial, images_root, &job.name)?;
        ours = true;
        install(builder, job, &config_file, &partial, &log)?;
        // The VM's sockets live in its scratch: a short path (at most 107 bytes),
        // which `--images` need not be.
        let scratch = std::env::temp_dir().join("microvm-local").join(format!(
            "build-{}",
            crate::host::hex(&crate::host::random(6))
        ));
        // The guest's console, kept when the build fails, says why its application
        // failed the image-build hooks.
        let snapshot = crate::vm::snapshot::build(&partial, &scratch, Some(&serial));
        let _ = std::fs::remove_dir_all(&scratch);
        snapshot.map_err(|e| format!("the image-build phase: {e}"))?;
        let mut request = job.request.clone();
        request.remove("clientToken");
        let record = json!({
            "request": request,
            "buildId": build_id,
            "createdAt": created_ms,
            "updatedAt": wire::now_ms(),
        });
        let file = partial.join(images::BUILD_FILE);
        std::fs::write(&file, format!("{record}\n"))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let done = images_root.join(&job.name);
        if done.exists() {
            return Err(format!(
                "{} appeared while the image was built",
                done.display()
            ));
        }
        std::fs::rename(&partial, &done).map_err(|e| format!("{}: {e}", done.display()))?;
        // Done: no sweep may ever take it (renamed first, so never unmarked as partial).
        crate::vm::disown(&done);
        Ok(())
    })();
    if r.is_err() && ours {
        let _ = std::fs::remove_dir_all(&partial);
    }
    r.map_err(|e| reason(&e, &log, &serial))
}

/// Make `partial` this endpoint's: created anew and marked with its pid, so that
/// another endpoint's start leaves it alone. One left by an endpoint that is gone
/// (or by this one: its builds run one at a time) is removed first; one of an
/// endpoint that lives is refused.
fn claim(partial: &Path, images_root: &Path, name: &str) -> Result<(), String> {
    use std::io::ErrorKind::{AlreadyExists, NotFound};
    let at = |e: std::io::Error| format!("{}: {e}", partial.display());
    let busy = || {
        format!(
            "another endpoint serving {} is building {name} now ({}): stop it, or give each endpoint its own --images (remove that directory if no endpoint runs)",
            images_root.display(),
            partial.display()
        )
    };
    match std::fs::create_dir(partial) {
        Ok(()) => {}
        Err(e) if e.kind() != AlreadyExists => return Err(at(e)),
        Err(_) => {
            let mine = crate::vm::owner(partial) == Some(std::process::id() as i32);
            if !(mine || orphaned(partial)) {
                return Err(busy());
            }
            match std::fs::remove_dir_all(partial) {
                Err(e) if e.kind() != NotFound => return Err(at(e)),
                _ => {}
            }
            // Made again meanwhile: by another endpoint, which owns it now.
            std::fs::create_dir(partial).map_err(|e| match e.kind() {
                AlreadyExists => busy(),
                _ => at(e),
            })?;
        }
    }
    crate::vm::own(partial).map_err(|e| {
        let _ = std::fs::remove_dir_all(partial);
        at(e)
    })
}

/// A partial no live endpoint builds: its owner is gone, or it has none and is older
/// than a minute (an endpoint marks the one it makes at once).
fn orphaned(partial: &Path) -> bool {
    match crate::vm::runner_alive(partial) {
        Some(alive) => !alive,
        None => std::fs::metadata(partial)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(60))),
    }
}

/// A failed build's `stateReason`: the error's first line (a boot error carries the
/// whole console), and where the rest is. The whole error goes to the build's log.
fn reason(error: &str, log: &Path, console: &Path) -> String {
    use std::io::Write;
    const MAX: usize = 1000;
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| writeln!(f, "microvm-local: the build failed: {error}"))
        .is_ok();
    // A boot error ends its first line by announcing the console that follows.
    let first = error.lines().next().unwrap_or_default();
    let first = first.strip_suffix("; serial:").unwrap_or(first);
    let mut r: String = first.chars().take(MAX).collect();
    if logged && (r.len() < error.trim_end().len()) {
        r.push_str(&format!(" (the whole error: {})", log.display()));
    }
    if console.exists() {
        r.push_str(&format!(" (the guest's console: {})", console.display()));
    }
    r
}

/// Remove what builds of an endpoint that was killed left in `images_root` (its
/// `.NAME.partial` directories, each marked with its endpoint's pid); returns them.
/// A build of an endpoint that lives is left alone.
pub fn sweep_partials(images_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(images_root) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let partial = name.starts_with('.') && name.ends_with(".partial");
        let orphan = partial && e.path().is_dir() && orphaned(&e.path());
        if orphan && std::fs::remove_dir_all(e.path()).is_ok() {
            swept.push(e.path());
        }
    }
    swept
}

/// A new image's record, PENDING, from its checked request.
pub fn pending(job: &Job, region: &str, account: &str) -> LocalImage {
    let now = wire::now_ms();
    LocalImage {
        arn: images::arn(region, account, &job.name),
        name: job.name.clone(),
        dir: job.code.clone(),
        created_ms: now,
        updated_ms: now,
        architecture: "X86_64",
        manifest: Value::Null,
        config: Value::Null,
        request: Some(job.request.clone()),
        build_id: images::build_id_from(&crate::host::hex(&crate::host::random(16))),
        state: BuildState::Pending,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn valid() -> Value {
        json!({
            "name": "my-app",
            "baseImageArn": "arn:aws:lambda:us-east-1:aws:managed-microvm-image:python",
            "buildRoleArn": "arn:aws:iam::123456789012:role/build",
            "codeArtifact": {"uri": "file:///src/app"},
        })
    }

    #[test]
    fn a_minimal_request_passes_and_each_constraint_is_named() {
        assert_eq!(check(&map(valid())), Vec::<String>::new());
        let mut full = valid();
        full["hooks"] = json!({"port": 9000,
            "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 60},
            "microvmImageHooks": {"ready": "DISABLED", "readyTimeoutInSeconds": 3600}});
        full["environmentVariables"] = json!({"A": "x".repeat(4096)});
        full["resources"] = json!([{"minimumMemoryInMiB": 256}]);
        full["cpuConfigurations"] = json!([{"architecture": "X86_64"}]);
        full["additionalOsCapabilities"] = json!(["ALL"]);
        full["logging"] = json!({"disabled": {}});
        full["egressNetworkConnectors"] = json!(["c"]);
        full["tags"] = json!({"team": "x"});
        full["clientToken"] = json!("t");
        assert_eq!(check(&map(full)), Vec::<String>::new());

        let cases = [
            ("name", json!("a.b"), "Value at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+"),
            ("name", json!("x".repeat(65)), "Value at 'name' failed to satisfy constraint: Member must have length between 1 and 64"),
            ("buildRoleArn", json!("arn:aws:iam::12:role/x"), "Value at 'buildRoleArn' failed to satisfy constraint: Member must satisfy regular expression pattern"),
            ("baseImageArn", json!("has space"), "Value at 'baseImageArn' failed to satisfy constraint: Member must satisfy regular expression pattern: [^\\s]+"),
            ("codeArtifact", json!({}), "Value at 'codeArtifact' failed to satisfy constraint: Member must have exactly one member set (uri)"),
            ("codeArtifact", json!({"uri": "file:///a", "s3": 1}), "Unknown member 's3' at 'codeArtifact'"),
            ("hooks", json!({"microvmHooks": {"runTimeoutInSeconds": 61}}), "Value at 'hooks.microvmHooks.runTimeoutInSeconds' failed to satisfy constraint: Member must be an integer between 1 and 60"),
            ("hooks", json!({"microvmImageHooks": {"validate": "ON"}}), "Value at 'hooks.microvmImageHooks.validate' failed to satisfy constraint: Member must satisfy enum value set: [DISABLED, ENABLED]"),
            ("hooks", json!({"port": 0}), "Value at 'hooks.port' failed to satisfy constraint: Member must be an integer between 1 and 65535"),
            ("environmentVariables", json!({"A": "x".repeat(4097)}), "Value at 'environmentVariables.A' failed to satisfy constraint: Member must have length between 0 and 4096"),
            ("resources", json!([{"minimumMemoryInMiB": 1}, {"minimumMemoryInMiB": 2}]), "Value at 'resources' failed to satisfy constraint: Member must have length less than or equal to 1"),
            ("resources", json!([{"minimumMemoryInMiB": 32}]), "Value at 'resources.0.minimumMemoryInMiB' failed to satisfy constraint: Member must be an integer between 64 and 1048576"),
            ("cpuConfigurations", json!([{"architecture": "RISCV"}]), "Value at 'cpuConfigurations.0.architecture' failed to satisfy constraint: Member must satisfy enum value set: [ARM_64, X86_64]"),
            ("egressNetworkConnectors", json!(["a", "b"]), "Value at 'egressNetworkConnectors' failed to satisfy constraint: Member must have length less than or equal to 1"),
            ("environmentVariables", json!({"A B": "x"}), "Value at 'environmentVariables.key' failed to satisfy constraint: Member must satisfy regular expression pattern: [^\\s]+"),
            ("environmentVariables", json!({"A=B": "x"}), "environmentVariables: the name \"A=B\" has '=' or NUL"),
            ("additionalOsCapabilities", json!(["ALL", "ALL"]), "Value at 'additionalOsCapabilities' failed to satisfy constraint: Member must have length less than or equal to 1"),
            ("clientToken", json!("t".repeat(129)), "Value at 'clientToken' failed to satisfy constraint: Member must have length between 1 and 128"),
            ("name", json!("base"), "name base: locally --images/base holds the managed images"),
            ("imageIdentifier", json!("x"), "Unknown member 'imageIdentifier': CreateMicrovmImage has baseImageArn"),
        ];
        for (k, v, want) in cases {
            let mut r = valid();
            r[k] = v;
            let e = check(&map(r));
            assert_eq!(e.len(), 1, "{k}: {e:?}");
            assert!(e[0].starts_with(want), "{k}: {e:?}");
        }
        let mut r = map(valid());
        r.remove("codeArtifact");
        assert_eq!(
            check(&r),
            ["Value null at 'codeArtifact' failed to satisfy constraint: Member must not be null"]
        );
    }

    #[test]
    fn the_request_overrides_the_artifacts_config_and_names_the_image() {
        let artifact = json!({"imageName": "theirs", "command": ["/usr/bin/python3", "/app/app.py"],
            "env": {"A": "1", "B": "2"}, "user": "app",
            "hooks": {"port": 8000}});
        let mut r = valid();
        r["environmentVariables"] = json!({"B": "two", "C": "3"});
        r["hooks"] = json!({"microvmHooks": {"run": "ENABLED"}});
        r["logging"] = json!({"disabled": {}});
        r["description"] = json!("not a config member");
        let c = image_config(&artifact, &map(r)).unwrap();
        assert_eq!(
            c,
            json!({"imageName": "my-app", "command": ["/usr/bin/python3", "/app/app.py"],
                "env": {"A": "1", "B": "two", "C": "3"}, "user": "app",
                "hooks": {"port": 8000, "microvmHooks": {"run": "ENABLED"}},
                "logging": {"disabled": {}}})
        );
        // Hooks merge member by member, at every level.
        let layered = json!({"command": ["/app/x"], "hooks": {"port": 8000,
            "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 5},
            "microvmImageHooks": {"ready": "ENABLED"}}});
        let mut r = valid();
        r["hooks"] = json!({"port": 9000, "microvmHooks": {"runTimeoutInSeconds": 30, "suspend": "ENABLED"}});
        let c = image_config(&layered, &map(r)).unwrap();
        assert_eq!(
            c["hooks"],
            json!({"port": 9000,
                "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 30, "suspend": "ENABLED"},
                "microvmImageHooks": {"ready": "ENABLED"}})
        );
        // The merged config is checked as the agent would at boot.
        let mut many = valid();
        many["environmentVariables"] =
            Value::Object((0..60).map(|i| (format!("R{i}"), json!("x"))).collect());
        let crowded = json!({"command": ["/x"],
            "env": (0..41).map(|i| (format!("A{i}"), json!("y"))).collect::<Map<_, _>>()});
        let e = image_config(&crowded, &map(many)).unwrap_err();
        assert!(
            e.contains("Value at 'env' failed to satisfy constraint: Member must have length less than or equal to 100"),
            "{e}"
        );
        let refused = |artifact: Value| image_config(&artifact, &map(valid())).unwrap_err();
        let e =
            refused(json!({"command": ["/x"], "hooks": {"microvmHooks": {"start": "ENABLED"}}}));
        assert!(
            e.contains("Unknown member 'start' at 'hooks.microvmHooks'"),
            "{e}"
        );
        let e = refused(json!({"command": ["/x"], "workingDir": "app"}));
        assert!(
            e.contains("workingDir \"app\" is not an absolute path"),
            "{e}"
        );
        // A member the agent would refuse at boot is refused before the install.
        let e = refused(json!({"command": ["/x"], "entrypoint": ["/y"]}));
        assert!(
            e.contains("\"entrypoint\", which the agent does not know"),
            "{e}"
        );
        // Without request members the artifact's config stands, renamed.
        let c = image_config(&artifact, &map(valid())).unwrap();
        assert_eq!(c["env"], json!({"A": "1", "B": "2"}));
        assert_eq!(c["hooks"], json!({"port": 8000}));
        assert_eq!(c["imageName"], "my-app");
        let e = image_config(&json!({"env": {}}), &map(valid())).unwrap_err();
        assert!(e.contains("no \"command\""), "{e}");
        let e = image_config(&json!([1]), &map(valid())).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
    }

    fn job(name: &str) -> Job {
        Job {
            name: name.into(),
            base: "/b".into(),
            code: "/c".into(),
            request: map(json!({"name": name, "description": "d"})),
        }
    }

    #[test]
    fn names_and_client_tokens_admit_one_build_each() {
        let root = std::env::temp_dir().join(format!("build-admit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("made")).unwrap();
        let b = Builds::default();
        let same = map(json!({"name": "a", "description": "d"}));
        let other = map(json!({"name": "a", "description": "e"}));
        let kind = |r: Result<Admitted, ApiError>| r.unwrap_err().kind;

        let new = |r: Result<Admitted, ApiError>| match r.unwrap() {
            Admitted::New(i) => *i,
            other => panic!("{other:?}"),
        };
        let a = new(b.admit(pending(&job("a"), "r", "1"), Some("t1".into()), &root));
        // The same token and request once more, as if it raced the first: the same image.
        assert!(matches!(
            b.admit(pending(&job("a"), "r", "1"), Some("t1".into()), &root),
            Ok(Admitted::Repeat(n)) if n == "a"
        ));
        assert_eq!(
            (a.state, a.summary()["state"].clone()),
            (BuildState::Pending, json!("CREATING"))
        );
        assert_eq!(b.repeat(Some("t1"), &same).unwrap(), Some("a".into()));
        assert_eq!(b.repeat(Some("t2"), &same).unwrap(), None);
        assert_eq!(b.repeat(None, &same).unwrap(), None);
        assert_eq!(
            b.repeat(Some("t1"), &other).unwrap_err().kind,
            "ConflictException"
        );
        // The name is taken while it builds, and by a directory of the images.
        assert_eq!(
            kind(b.admit(pending(&job("a"), "r", "1"), None, &root)),
            "ConflictException"
        );
        assert_eq!(
            kind(b.admit(pending(&job("made"), "r", "1"), None, &root)),
            "ConflictException"
        );
        b.update("a", |i| i.state = BuildState::InProgress);
        assert_eq!(
            kind(b.admit(pending(&job("a"), "r", "1"), None, &root)),
            "ConflictException"
        );

        // A failed build gives its name up, and its tokens with it.
        b.update("a", |i| {
            i.state = BuildState::Failed;
            i.reason = Some("no".into());
        });
        let failed = b.get("a").unwrap();
        assert_eq!(failed.summary()["state"], "CREATE_FAILED");
        assert_eq!(failed.summary()["latestFailedImageVersion"], "1");
        assert_eq!(failed.version("r", "1")["state"], "FAILED");
        assert_eq!(failed.version("r", "1")["status"], "INACTIVE");
        assert_eq!(failed.build_summary()["stateReason"], "no");
        let again = new(b.admit(pending(&job("a"), "r", "1"), Some("t3".into()), &root));
        assert_ne!(again.build_id, failed.build_id);
        assert_eq!(b.repeat(Some("t1"), &same).unwrap(), None);
        assert_eq!(b.repeat(Some("t3"), &same).unwrap(), Some("a".into()));
        assert_eq!(b.all().len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn only_partials_of_dead_endpoints_are_swept_and_reasons_stay_short() {
        let root = std::env::temp_dir().join(format!("build-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            ".live.partial",
            ".dead.partial",
            ".bare.partial",
            ".new.partial",
            "image",
            ".x",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        std::fs::File::open(root.join(".bare.partial"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        crate::vm::own(&root.join(".live.partial")).unwrap();
        // A pid no process has (above the kernel's pid_max).
        std::fs::write(root.join(".dead.partial/owner.pid"), "2147483647").unwrap();
        let mut swept = sweep_partials(&root);
        swept.sort();
        assert_eq!(
            swept,
            [root.join(".bare.partial"), root.join(".dead.partial")]
        );
        for kept in [".live.partial", ".new.partial", "image"] {
            assert!(root.join(kept).is_dir(), "{kept}");
        }

        // A build claims its partial: anew when it is its own endpoint's or an
        // orphan's, never when a live endpoint's.
        let p = root.join(".claimed.partial");
        claim(&p, &root, "claimed").unwrap();
        assert_eq!(crate::vm::runner_alive(&p), Some(true));
        std::fs::write(p.join("rootfs.ext4"), "half").unwrap();
        claim(&p, &root, "claimed").unwrap();
        assert!(!p.join("rootfs.ext4").exists());
        std::fs::write(p.join("owner.pid"), "1").unwrap();
        let e = claim(&p, &root, "claimed").unwrap_err();
        assert!(e.contains("another endpoint serving"), "{e}");
        std::fs::write(p.join("owner.pid"), "2147483647").unwrap();
        claim(&p, &root, "claimed").unwrap();
        // Unmarked and fresh: one another endpoint has just made.
        let fresh = root.join(".fresh.partial");
        std::fs::create_dir(&fresh).unwrap();
        let e = claim(&fresh, &root, "fresh").unwrap_err();
        assert!(e.contains("another endpoint serving"), "{e}");
        assert!(fresh.is_dir());

        let (log, console) = (root.join("build.log"), root.join("serial.log"));
        let r = reason("boot failed\nserial:\nlots of lines", &log, &console);
        assert_eq!(
            r,
            format!("boot failed (the whole error: {})", log.display())
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("lots of lines"), "{logged}");
        std::fs::write(&console, "x").unwrap();
        assert_eq!(
            reason("/ready answered 500", &log, &console),
            format!(
                "/ready answered 500 (the guest's console: {})",
                console.display()
            )
        );
        let long = reason(&"e".repeat(5000), &log, &console);
        assert!(
            long.starts_with(&format!("{} (the whole error", "e".repeat(1000))),
            "{long}"
        );
        assert_eq!(
            reason(
                "qemu exited during boot (exit 1); serial:\n[ 0.1] Linux",
                &log,
                &root.join("none")
            ),
            format!(
                "qemu exited during boot (exit 1) (the whole error: {})",
                log.display()
            )
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_built_version_shows_the_config_it_runs_with() {
        let mut i = pending(&job("a"), "r", "1");
        i.request = Some(map(json!({"name": "a",
            "hooks": {"microvmHooks": {"run": "ENABLED"}},
            "environmentVariables": {"B": "2"}})));
        // Before the build: only the request.
        let v = i.version("r", "1");
        assert_eq!(v["hooks"], json!({"microvmHooks": {"run": "ENABLED"}}));
        assert!(v.get("cpuConfigurations").is_none(), "{v}");
        i.state = BuildState::Successful;
        i.config = json!({"command": ["/x"], "env": {"A": "1", "B": "2"},
            "hooks": {"port": 8000, "microvmHooks": {"run": "ENABLED"}},
            "logging": {"disabled": {}}, "additionalOsCapabilities": []});
        i.manifest = json!({"snapshot": {"memoryMiB": 512}});
        let v = i.version("r", "1");
        assert_eq!(
            v["hooks"],
            json!({"port": 8000, "microvmHooks": {"run": "ENABLED"}})
        );
        assert_eq!(v["environmentVariables"], json!({"A": "1", "B": "2"}));
        assert_eq!(v["logging"], json!({"disabled": {}}));
        assert_eq!(v["cpuConfigurations"], json!([{"architecture": "X86_64"}]));
        assert_eq!(v["resources"], json!([{"minimumMemoryInMiB": 512}]));
        assert!(v.get("additionalOsCapabilities").is_none(), "{v}");
        assert_eq!(
            (v["state"].clone(), v["status"].clone()),
            (json!("SUCCESSFUL"), json!("ACTIVE"))
        );
        i.config["resources"] = json!([{"minimumMemoryInMiB": 256}]);
        assert_eq!(
            i.version("r", "1")["resources"],
            json!([{"minimumMemoryInMiB": 256}])
        );
    }

    #[test]
    fn requests_resolve_to_a_local_base_and_an_absolute_artifact() {
        let root = std::env::temp_dir().join(format!("build-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("base/python")).unwrap();
        std::fs::write(root.join("base/python/base.json"), "{}").unwrap();
        let code = root.join("app");
        std::fs::create_dir_all(&code).unwrap();
        std::fs::write(root.join("app.zip"), "PK").unwrap();
        let with = |k: &str, v: Value| {
            let mut r = valid();
            r[k] = v;
            map(r)
        };
        let uri = json!({"uri": format!("file://{}", code.display())});
        let job = resolve(&with("codeArtifact", uri.clone()), &root, "us-east-1").unwrap();
        assert_eq!(
            (job.base, job.code),
            (root.join("base/python"), code.clone())
        );
        let zip = json!({"uri": format!("file://{}", root.join("app.zip").display())});
        assert!(resolve(&with("codeArtifact", zip), &root, "us-east-1").is_ok());
        std::fs::create_dir_all(root.join("my app")).unwrap();
        std::fs::write(root.join("APP.ZIP"), "PK").unwrap();
        for (uri, want) in [
            (
                format!("file://{}/my%20app", root.display()),
                root.join("my app"),
            ),
            (
                format!("file://{}/APP.ZIP", root.display()),
                root.join("APP.ZIP"),
            ),
        ] {
            let r = with("codeArtifact", json!({ "uri": uri }));
            assert_eq!(resolve(&r, &root, "us-east-1").unwrap().code, want);
        }
        let mut other = map(valid());
        other.insert("codeArtifact".into(), uri.clone());
        let kind = |r: Result<Job, ApiError>| r.unwrap_err().kind;
        other.insert(
            "baseImageArn".into(),
            json!("arn:aws:lambda:us-east-1:aws:managed-microvm-image:ruby"),
        );
        assert_eq!(
            kind(resolve(&other, &root, "us-east-1")),
            "ResourceNotFoundException"
        );
        other.insert(
            "baseImageArn".into(),
            json!("arn:aws:lambda:us-east-1:aws:managed-microvm-image:python"),
        );
        assert_eq!(
            kind(resolve(&other, &root, "eu-west-1")),
            "ResourceNotFoundException"
        );
        other.insert("baseImageVersion".into(), json!("2"));
        assert_eq!(
            kind(resolve(&other, &root, "us-east-1")),
            "ResourceNotFoundException"
        );
        other.insert("baseImageVersion".into(), json!("1"));
        other.insert(
            "cpuConfigurations".into(),
            json!([{"architecture": "ARM_64"}]),
        );
        assert_eq!(
            kind(resolve(&other, &root, "us-east-1")),
            "ValidationException"
        );
        other.remove("cpuConfigurations");
        assert!(resolve(&other, &root, "us-east-1").is_ok());
        for bad in [
            "s3://bucket/app.zip".to_string(),
            "file://relative/app".into(),
            format!("file://{}", root.join("missing").display()),
            format!("file://{}", root.join("base/python/base.json").display()),
            format!("file://{}/my%2", root.display()),
            format!("file://{}/my%00app", root.display()),
        ] {
            other.insert("codeArtifact".into(), json!({"uri": bad}));
            assert_eq!(
                kind(resolve(&other, &root, "us-east-1")),
                "ValidationException",
                "{bad}"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
