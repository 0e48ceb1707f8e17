//! The images the server offers: each directory of `--images` that `make rootfs`
//! built (an image directory the runner opens), named by its directory, with one
//! version, "1": the build on disk. ARNs in the platform's form.

use super::wire::{epoch_seconds, ApiError};
use crate::vm::Image;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Locally every image has exactly one version: the build on disk.
pub const VERSION: &str = "1";

/// Where an image's one build stands: the model's `BuildState`, from which the
/// image's state (`MicrovmImageState`) and its version's follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    /// Waiting for its turn (one build at a time: each boots a guest).
    Pending,
    InProgress,
    Successful,
    Failed,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Pending => "PENDING",
            BuildState::InProgress => "IN_PROGRESS",
            BuildState::Successful => "SUCCESSFUL",
            BuildState::Failed => "FAILED",
        }
    }

    /// The image's `MicrovmImageState`.
    pub fn image_state(self) -> &'static str {
        match self {
            BuildState::Pending | BuildState::InProgress => "CREATING",
            BuildState::Successful => "CREATED",
            BuildState::Failed => "CREATE_FAILED",
        }
    }
}

/// The CreateMicrovmImage members an image version repeats (its request, as given).
pub const VERSION_MEMBERS: [&str; 14] = [
    "baseImageArn",
    "baseImageVersion",
    "buildRoleArn",
    "description",
    "codeArtifact",
    "logging",
    "egressNetworkConnectors",
    "cpuConfigurations",
    "resources",
    "additionalOsCapabilities",
    "hooks",
    "environmentVariables",
    "kmsKeyIdentifier",
    "tags",
];

/// What CreateMicrovmImage leaves beside an image it built (`build.json`): its
/// request and its build's id and times, which a `make rootfs` image has none of.
pub const BUILD_FILE: &str = "build.json";

#[derive(Debug, Clone)]
pub struct LocalImage {
    pub name: String,
    pub dir: PathBuf,
    pub arn: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The model's `Architecture` (X86_64, ARM_64).
    pub architecture: &'static str,
    pub manifest: Value,
    pub config: Value,
    /// The CreateMicrovmImage request (without its clientToken) when the endpoint
    /// built it; None for a `make rootfs` image.
    pub request: Option<Map<String, Value>>,
    pub build_id: String,
    pub state: BuildState,
    /// Why the build failed.
    pub reason: Option<String>,
}

/// The model's `ImageName`: 1-64 of `[a-zA-Z0-9-_]`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{account}:microvm-image:{name}")
}

/// The image an identifier names: its name, or its ARN (with or without a
/// `:version` suffix, which must then be the one version).
pub fn name_of<'a>(
    identifier: &'a str,
    region: &str,
    account: &str,
) -> Option<(&'a str, Option<&'a str>)> {
    let prefix = format!("arn:aws:lambda:{region}:{account}:microvm-image:");
    match identifier.strip_prefix(&prefix) {
        Some(rest) => match rest.split_once(':') {
            Some((n, v)) => Some((n, Some(v))),
            None => Some((rest, None)),
        },
        None if identifier.starts_with("arn:") => None,
        None => Some((identifier, None)),
    }
}

/// Every image under `root`, by name (read anew at each call: `make rootfs` may
/// rebuild one while the server runs).
/// The managed images: the Debian bases `make base-python` / `base-node` build under
/// `<images>/base/<name>` (each with its `base.json`), as ListManagedMicrovmImages
/// lists them: (name, summary), by name.
pub fn managed(root: &Path, region: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("base")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !valid_name(&name) {
            continue;
        }
        let Ok(made) = std::fs::metadata(e.path().join("base.json")).and_then(|m| m.modified())
        else {
            continue;
        };
        let ms = made
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let summary = json!({
            "imageArn": format!("arn:aws:lambda:{region}:aws:managed-microvm-image:{name}"),
            "createdAt": epoch_seconds(ms),
            "updatedAt": epoch_seconds(ms),
        });
        out.push((name, summary));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn scan(root: &Path, region: &str, account: &str) -> Vec<LocalImage> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !valid_name(&name) {
            continue;
        }
        let dir = e.path();
        let Ok(image) = Image::open(&dir) else {
            continue;
        };
        let created_ms = std::fs::metadata(dir.join("rootfs.ext4"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let read = |f: &str| {
            std::fs::read(dir.join(f))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        };
        let build = read(BUILD_FILE);
        let ms = |k: &str| build[k].as_u64().unwrap_or(created_ms);
        let arn = arn(region, account, &name);
        out.push(LocalImage {
            architecture: image.arch.model_name(),
            manifest: read("manifest.json"),
            config: read("image.json"),
            request: build["request"].as_object().cloned(),
            build_id: build["buildId"]
                .as_str()
                .map_or_else(|| made_build_id(&arn, created_ms), str::to_string),
            created_ms: ms("createdAt"),
            updated_ms: ms("updatedAt"),
            state: BuildState::Successful,
            reason: None,
            arn,
            name,
            dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The image an identifier names, or ResourceNotFoundException.
pub fn find(
    root: &Path,
    region: &str,
    account: &str,
    identifier: &str,
) -> Result<LocalImage, ApiError> {
    let missing = || ApiError::not_found("MicrovmImage", identifier);
    let (name, version) = name_of(identifier, region, account).ok_or_else(missing)?;
    if version.is_some_and(|v| v != VERSION) {
        return Err(ApiError::not_found("MicrovmImageVersion", identifier));
    }
    scan(root, region, account)
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(missing)
}

/// A `make rootfs` image's build id: stable for one build of one image (its ARN and
/// the time its disk was made), in the shape of the ids the endpoint gives.
fn made_build_id(arn: &str, created_ms: u64) -> String {
    use sha2::Digest;
    let h = crate::host::hex(&sha2::Sha256::digest(format!("{arn}@{created_ms}")));
    build_id_from(&h)
}

/// A build id of 32 hex digits, UUID-shaped.
pub fn build_id_from(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Null, or an empty object, list or string: a config member that says nothing.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The model's `Architecture` and `Chipset` enums.
pub const ARCHITECTURES: [&str; 2] = ["ARM_64", "X86_64"];
pub const CHIPSETS: [&str; 2] = ["GRAVITON", "INTEL"];

/// The model's `Chipset` for an architecture.
fn chipset(architecture: &str) -> &'static str {
    if architecture == "ARM_64" {
        "GRAVITON"
    } else {
        "INTEL"
    }
}

/// The `chipsetGeneration` of every local build: QEMU emulates the CPU.
pub const CHIPSET_GENERATION: &str = "qemu";

impl LocalImage {
    /// `MicrovmImageSummary` (ListMicrovmImages' items).
    pub fn summary(&self) -> Value {
        let mut v = json!({
            "imageArn": self.arn,
            "name": self.name,
            "state": self.state.image_state(),
            "createdAt": epoch_seconds(self.created_ms),
        });
        match self.state {
            BuildState::Successful => v["latestActiveImageVersion"] = json!(VERSION),
            BuildState::Failed => v["latestFailedImageVersion"] = json!(VERSION),
            _ => {}
        }
        v
    }

    /// `GetMicrovmImageOutput`: the summary, when it last changed, and its tags.
    pub fn get(&self) -> Value {
        let mut v = self.summary();
        v["updatedAt"] = json!(epoch_seconds(self.updated_ms));
        if let Some(t) = self.request.as_ref().and_then(|r| r.get("tags")) {
            v["tags"] = t.clone();
        }
        v
    }

    /// `CreateMicrovmImageResponse`: the request as given, and where the image stands.
    pub fn created(&self) -> Value {
        let mut v = self.get();
        if let Some(r) = &self.request {
            for k in VERSION_MEMBERS {
                if let Some(x) = r.get(k) {
                    v[k] = x.clone();
                }
            }
        }
        v["imageVersion"] = json!(VERSION);
        v
    }

    /// `MicrovmImageVersionSummary` / `GetMicrovmImageVersionOutput`: the request it
    /// was built from (or, for a `make rootfs` image, where it came from), then what
    /// the image runs with: its config as built (the artifact's `image.json` under
    /// the request's members), its architecture and memory.
    pub fn version(&self, region: &str, account: &str) -> Value {
        let mut v = json!({
            "imageArn": self.arn,
            "imageVersion": VERSION,
            "state": self.state.as_str(),
            "status": if self.state == BuildState::Successful { "ACTIVE" } else { "INACTIVE" },
            "createdAt": epoch_seconds(self.created_ms),
            "updatedAt": epoch_seconds(self.updated_ms),
        });
        if let Some(r) = &self.reason {
            v["stateReason"] = json!(r);
        }
        match &self.request {
            Some(r) => {
                for k in VERSION_MEMBERS {
                    if let Some(x) = r.get(k) {
                        v[k] = x.clone();
                    }
                }
            }
            None => {
                v["baseImageArn"] = json!(format!(
                    "arn:aws:lambda:{region}:aws:managed-microvm-image:local"
                ));
                v["buildRoleArn"] = json!(format!("arn:aws:iam::{account}:role/local-build"));
                v["codeArtifact"] = json!({"uri": format!("file://{}", self.dir.display())});
            }
        }
        if self.state != BuildState::Successful {
            // Not built (yet): the request is all there is.
            return v;
        }
        v["cpuConfigurations"] = json!([{"architecture": self.architecture}]);
        let config = |k: &str| self.config.get(k).filter(|x| !is_empty(x));
        for (from, to) in [
            ("hooks", "hooks"),
            ("env", "environmentVariables"),
            ("logging", "logging"),
            ("additionalOsCapabilities", "additionalOsCapabilities"),
            ("resources", "resources"),
        ] {
            if let Some(x) = config(from) {
                v[to] = x.clone();
            }
        }
        let memory = self
            .manifest
            .get("snapshot")
            .and_then(|s| s.get("memoryMiB"));
        if let (None, Some(m)) = (config("resources"), memory) {
            v["resources"] = json!([{"minimumMemoryInMiB": m}]);
        }
        v
    }

    /// `MicrovmImageBuildSummary`: the image's one build (locally a version has one,
    /// for its one architecture).
    pub fn build_summary(&self) -> Value {
        let mut v = json!({
            "imageArn": self.arn,
            "imageVersion": VERSION,
            "buildId": self.build_id,
            "buildState": self.state.as_str(),
            "architecture": self.architecture,
            "chipset": chipset(self.architecture),
            "chipsetGeneration": CHIPSET_GENERATION,
            "createdAt": epoch_seconds(self.created_ms),
        });
        if let Some(r) = &self.reason {
            v["stateReason"] = json!(r);
        }
        v
    }

    /// `GetMicrovmImageBuildOutput`: the summary and what the build made (the
    /// snapshot's memory and disk, the code as installed), once it made them.
    pub fn build(&self) -> Value {
        let mut v = self.build_summary();
        let snapshot = &self.manifest["snapshot"];
        let mut made = Map::new();
        for (from, to) in [
            (
                &snapshot["memorySnapshotSizeInBytes"],
                "memorySnapshotSizeInBytes",
            ),
            (
                &snapshot["diskSnapshotSizeInBytes"],
                "diskSnapshotSizeInBytes",
            ),
            (&self.manifest["codeBytes"], "codeInstallSizeInBytes"),
        ] {
            if let Some(n) = from.as_u64() {
                made.insert(to.into(), json!(n));
            }
        }
        if !made.is_empty() {
            v["snapshotBuild"] = Value::Object(made);
        }
        v
    }

    /// Whether a build answers ListMicrovmImageBuilds' filters.
    pub fn build_matches(&self, pairs: &[(String, String)]) -> bool {
        let want = |k: &str, have: &str| super::wire::query(pairs, k).is_none_or(|w| w == have);
        want("architecture", self.architecture)
            && want("chipset", chipset(self.architecture))
            && want("chipsetGeneration", CHIPSET_GENERATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_names_or_arns_of_this_region_and_account() {
        assert_eq!(
            name_of("example", "us-east-1", "000000000000"),
            Some(("example", None))
        );
        let arn = arn("us-east-1", "000000000000", "example");
        assert_eq!(
            arn,
            "arn:aws:lambda:us-east-1:000000000000:microvm-image:example"
        );
        assert_eq!(
            name_of(&arn, "us-east-1", "000000000000"),
            Some(("example", None))
        );
        let versioned = format!("{arn}:1");
        assert_eq!(
            name_of(&versioned, "us-east-1", "000000000000"),
            Some(("example", Some("1")))
        );
        assert_eq!(name_of(&arn, "eu-west-1", "000000000000"), None);
        assert!(
            valid_name("a-b_C9")
                && !valid_name("a.b")
                && !valid_name("")
                && !valid_name(&"x".repeat(65))
        );
    }
}
