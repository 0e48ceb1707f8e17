//! The images the server offers: each directory of `--images` that `make rootfs`
//! built (an image directory the runner opens), named by its directory, with one
//! version, "1": the build on disk. ARNs in the platform's form.

use super::wire::{epoch_seconds, ApiError};
use crate::vm::Image;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Locally every image has exactly one version: the build on disk.
pub const VERSION: &str = "1";

#[derive(Debug, Clone)]
pub struct LocalImage {
    pub name: String,
    pub dir: PathBuf,
    pub arn: String,
    pub created_ms: u64,
    /// The image's `imageName` (its default log group is named after it).
    pub architecture: &'static str,
    pub manifest: Value,
    pub config: Value,
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
        out.push(LocalImage {
            arn: arn(region, account, &name),
            architecture: image.arch.model_name(),
            manifest: read("manifest.json"),
            config: read("image.json"),
            name,
            dir,
            created_ms,
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

impl LocalImage {
    /// `MicrovmImageSummary` / `GetMicrovmImageOutput`.
    pub fn summary(&self) -> Value {
        json!({
            "imageArn": self.arn,
            "name": self.name,
            "state": "CREATED",
            "latestActiveImageVersion": VERSION,
            "createdAt": epoch_seconds(self.created_ms),
            "updatedAt": epoch_seconds(self.created_ms),
        })
    }

    /// `MicrovmImageVersionSummary` / `GetMicrovmImageVersionOutput`: what the local
    /// build knows (its architecture, hooks, snapshot sizes).
    pub fn version(&self, region: &str, account: &str) -> Value {
        let mut v = json!({
            "baseImageArn": format!("arn:aws:lambda:{region}:aws:managed-microvm-image:local"),
            "buildRoleArn": format!("arn:aws:iam::{account}:role/local-build"),
            "codeArtifact": {"uri": format!("file://{}", self.dir.display())},
            "cpuConfigurations": [{"architecture": self.architecture}],
            "imageArn": self.arn,
            "imageVersion": VERSION,
            "state": "SUCCESSFUL",
            "status": "ACTIVE",
            "createdAt": epoch_seconds(self.created_ms),
            "updatedAt": epoch_seconds(self.created_ms),
        });
        if let Some(h) = self.config.get("hooks") {
            v["hooks"] = h.clone();
        }
        if let Some(m) = self
            .manifest
            .get("snapshot")
            .and_then(|s| s.get("memoryMiB"))
        {
            v["resources"] = json!([{"minimumMemoryInMiB": m}]);
        }
        v
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
