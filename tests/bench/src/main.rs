//! `make bench`: the agent's own costs, each against a baseline from the same run.
//!
//! The agent runs as an ordinary process here (not PID 1: no namespaces, so the
//! application's hooks port is reachable directly for the baseline), with the
//! release build of the example application as its command. Each row says its
//! target and whether it is met. The report goes to stdout and to `<out>/report.md`.

mod agent;
mod client;
mod cwserver;
mod hooks;
mod ingress;
mod logs;
mod report;
mod vm;

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Measure the agent's costs against baselines (make bench)"
)]
pub struct Opts {
    /// The agent binary to measure (release, static).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/x86_64-unknown-linux-musl/release/microvm-agent"
    )]
    pub agent: PathBuf,
    /// The example application (the recorder); the echo app is taken from beside it.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/examples/recorder"
    )]
    pub app: PathBuf,
    /// Where scratch files and report.md go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
    /// Agent starts to time (each also times one /run).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub boots: usize,
    /// Hook calls per kind on one agent; also GETs per ingress figure.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = RangedU64ValueParser::<usize>::new().range(2..))]
    pub calls: usize,
    /// An image directory (`make rootfs`): adds the real-guest figures.
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,
    /// Only the real-guest figures (an image of another architecture: its agent
    /// cannot run as a process here).
    #[arg(long, requires = "image")]
    pub guest_only: bool,
    /// An image built from a Debian base (`make python-image`): its sizes, build
    /// times and boot to /run answered. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub base_image: Vec<PathBuf>,
    /// Runs of each throughput figure (logs, ingress streams) to take the median of.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub repeats: usize,
    /// Real-guest boots to take the median of.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub vm_boots: usize,
}

fn main() {
    let o = Opts::parse();
    std::fs::create_dir_all(&o.out).expect("create the output directory");
    // Many connections at once (ingress's idle figure): the soft descriptor limit up
    // to the hard one, inherited by the agents and applications started here.
    microvm_tests::raise_nofile();
    if !o.guest_only && o.app.with_file_name("echo").exists() {
        // Before anything long runs: the ingress section needs port 8080.
        if let Err(e) = ingress::check_raw_port() {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
    let mut out = report::header();
    if !o.guest_only {
        out.push_str(&hooks::bench(&o));
        out.push_str(&logs::bench(&o));
        out.push_str(&ingress::bench(&o));
        out.push_str(&summary(&out));
    }
    if let Some(image) = &o.image {
        out.push_str(&vm::bench(image, &o));
        out.push_str(&vm::snapshots(image, &o));
    }
    for image in &o.base_image {
        out.push_str(&vm::base_image(image, &o));
    }
    print!("{out}");
    std::fs::write(o.out.join("report.md"), &out).expect("write report.md");
}

/// How many rows met their targets, and which did not.
fn summary(report: &str) -> String {
    let judged: Vec<&str> = report
        .lines()
        .filter(|l| l.ends_with("| met |") || l.ends_with("| NOT met |"))
        .collect();
    let missed: Vec<String> = judged
        .iter()
        .filter(|l| l.ends_with("| NOT met |"))
        .map(|l| {
            format!(
                "- {}\n",
                l.trim_start_matches('|')
                    .split('|')
                    .next()
                    .unwrap_or("")
                    .trim()
            )
        })
        .collect();
    format!(
        "\n## Summary\n\n{} of {} targets met.\n{}{}",
        judged.len() - missed.len(),
        judged.len(),
        if missed.is_empty() { "" } else { "Not met:\n" },
        missed.concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn flags_and_defaults() {
        let o = Opts::try_parse_from(["bench", "--agent", "a", "--boots", "2", "--image", "img"])
            .unwrap();
        assert_eq!(o.agent, PathBuf::from("a"));
        assert_eq!((o.boots, o.calls, o.vm_boots, o.repeats), (2, 2000, 3, 3));
        assert_eq!(o.image, Some(PathBuf::from("img")));
    }

    #[test]
    fn the_summary_counts_judged_rows() {
        let r = "| a | 1 | met |\n| b | 2 | NOT met |\n| c | 3 | - |\n";
        assert_eq!(
            summary(r),
            "\n## Summary\n\n1 of 2 targets met.\nNot met:\n- b\n"
        );
    }

    #[test]
    fn bad_flags_are_usage_errors_not_panics() {
        let e = Opts::try_parse_from(["bench", "--frobnicate", "1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert_eq!(e.exit_code(), 2);
        let e = Opts::try_parse_from(["bench", "--guest-only"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = Opts::try_parse_from(["bench", "--boots", "many"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = Opts::try_parse_from(["bench", "--boots", "0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = Opts::try_parse_from(["bench", "--agent"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
    }
}
