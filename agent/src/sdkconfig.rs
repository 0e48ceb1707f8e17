//! The application's AWS SDK configuration file. SDKs take credentials from the
//! metadata service, but most take the region only from their environment or their
//! config file, and the application starts before `/run` says the region: so the
//! agent points `AWS_CONFIG_FILE` (unless the image sets it) at a file on /run that
//! it fills at `/run`. Only validated values are written: a newline in a value could
//! add a `credential_process` line, which SDKs execute.

use crate::config::run::valid_region;
use std::path::Path;

pub const ENV: &str = "AWS_CONFIG_FILE";
/// On /run (a tmpfs the agent mounts), so it works on a read-only root.
pub const PATH: &str = "/run/microvm/aws/config";

/// The file's text for `region`; None for anything that is not a region name.
pub fn render(region: Option<&str>) -> Option<String> {
    match region {
        None => Some("[default]\n".into()),
        Some(r) if valid_region(r) => Some(format!("[default]\nregion = {r}\n")),
        Some(_) => None,
    }
}

/// Write it atomically (a reader sees the old file or the new, never half).
pub fn write(path: &Path, region: Option<&str>) -> std::io::Result<()> {
    let text = render(region).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a region name")
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_region_name_is_ever_written() {
        assert_eq!(
            render(Some("eu-west-3")).as_deref(),
            Some("[default]\nregion = eu-west-3\n")
        );
        assert_eq!(render(None).as_deref(), Some("[default]\n"));
        for bad in ["us-east-1\ncredential_process = /bin/sh", "x y", ""] {
            assert_eq!(render(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn written_atomically_where_asked() {
        let dir = std::env::temp_dir().join(format!("sdkconfig-{}", std::process::id()));
        let path = dir.join("aws/config");
        write(&path, Some("us-west-2")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[default]\nregion = us-west-2\n"
        );
        assert!(write(&path, Some("bad\nline")).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[default]\nregion = us-west-2\n",
            "a refused value leaves the file as it was"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
