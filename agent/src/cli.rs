//! `microvm-agent [--control vsock:PORT | --control unix:PATH] [--image-config PATH]`

use crate::transport::Addr;
use microvm_protocol::ports;
use std::path::PathBuf;

pub const DEFAULT_CONTROL: Addr = Addr::Vsock(ports::CONTROL);
pub const DEFAULT_INGRESS: Addr = Addr::Vsock(ports::INGRESS);
pub const DEFAULT_IMAGE_CONFIG: &str = "/etc/microvm/image.json";

pub const USAGE: &str =
    "usage: microvm-agent [--control vsock:PORT | --control unix:PATH] [--image-config PATH]";

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub control: Addr,
    pub ingress: Addr,
    pub image_config: PathBuf,
    /// Words we did not understand. The kernel passes unknown command-line words to
    /// init as arguments, so as PID 1 they are logged and ignored, never fatal.
    pub ignored: Vec<String>,
    pub help: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            control: DEFAULT_CONTROL,
            ingress: DEFAULT_INGRESS,
            image_config: PathBuf::from(DEFAULT_IMAGE_CONFIG),
            ignored: Vec::new(),
            help: false,
        }
    }
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let (args, mut errors) = parse_all(args);
    if errors.is_empty() {
        Ok(args)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Every flag that parses, and what was wrong with the others (those keep their
/// defaults). PID 1 cannot refuse to start, and one bad value must not cost it the
/// flags that were right (a `--control` lost is a VM nobody can reach).
pub fn parse_all(args: impl IntoIterator<Item = String>) -> (Args, Vec<String>) {
    let mut out = Args::default();
    let mut errors = Vec::new();
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        // A flag where a value belongs is not taken as the value: it stays a flag
        // (`--image-config --control vsock:1` must not lose `--control`).
        let mut value = |name: &str| match inline.clone() {
            Some(v) => Ok(v),
            None => match it.peek() {
                Some(next) if !next.starts_with("--") => Ok(it.next().unwrap_or_default()),
                _ => Err(format!("{name} needs a value\n{USAGE}")),
            },
        };
        let step = match flag.as_str() {
            "--control" => value("--control")
                .and_then(|v| v.parse())
                .map(|v| out.control = v),
            "--ingress" => value("--ingress")
                .and_then(|v| v.parse())
                .map(|v| out.ingress = v),
            "--image-config" => {
                value("--image-config").map(|v| out.image_config = PathBuf::from(v))
            }
            "-h" | "--help" => {
                out.help = true;
                Ok(())
            }
            _ => {
                out.ignored.push(a);
                Ok(())
            }
        };
        if let Err(e) = step {
            errors.push(e);
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Args, String> {
        parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = p(&[]).unwrap();
        assert_eq!(a.control, Addr::Vsock(9000));
        assert_eq!(a.ingress, Addr::Vsock(9080));
        assert_eq!(a.image_config, PathBuf::from("/etc/microvm/image.json"));
    }

    #[test]
    fn flags_both_spellings() {
        let a = p(&["--control", "unix:/x/c.sock", "--image-config=/i.json"]).unwrap();
        assert_eq!(a.control, Addr::Unix("/x/c.sock".into()));
        assert_eq!(a.image_config, PathBuf::from("/i.json"));
        assert_eq!(p(&["--control=vsock:7"]).unwrap().control, Addr::Vsock(7));
        assert_eq!(
            p(&["--ingress", "unix:/i"]).unwrap().ingress,
            Addr::Unix("/i".into())
        );
    }

    #[test]
    fn errors_and_kernel_leftovers() {
        assert!(p(&["--control"]).is_err());
        assert!(p(&["--control", "tcp:1"]).is_err());
        let a = p(&["splash", "--control", "vsock:1"]).unwrap();
        assert_eq!(a.ignored, ["splash"]);
    }

    #[test]
    fn one_bad_value_costs_only_its_own_flag() {
        let (a, errors) = parse_all(
            [
                "--ingress",
                "tcp:1",
                "--control",
                "unix:/c",
                "--image-config",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        assert_eq!(a.control, Addr::Unix("/c".into()));
        assert_eq!(a.ingress, DEFAULT_INGRESS);
        assert_eq!(a.image_config, PathBuf::from(DEFAULT_IMAGE_CONFIG));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[1].starts_with("--image-config needs a value"),
            "{errors:?}"
        );
        let (a, errors) = parse_all(
            ["--image-config", "--control", "vsock:7"]
                .iter()
                .map(|s| s.to_string()),
        );
        assert_eq!(
            a.control,
            Addr::Vsock(7),
            "the flag was not eaten as a value"
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
