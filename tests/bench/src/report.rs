//! Percentiles, the machine, and the markdown the report is made of: one table per
//! section, each row against a baseline from the same run and its target.

use std::time::Duration;

pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of some figures (runs repeated to tame the noise).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "-",
    }
}

/// A latency row: through the agent against a baseline (straight to the
/// application), with the largest ratios the target allows at p50 and p99.
pub struct Lat {
    pub name: String,
    pub via: Vec<Duration>,
    pub base: Option<Vec<Duration>>,
    pub max_p50: Option<f64>,
    pub max_p99: Option<f64>,
}

impl Lat {
    pub fn new(name: impl Into<String>, via: Vec<Duration>, base: Option<Vec<Duration>>) -> Lat {
        Lat {
            name: name.into(),
            via,
            base,
            max_p50: None,
            max_p99: None,
        }
    }

    pub fn target(mut self, p50: Option<f64>, p99: Option<f64>) -> Lat {
        self.max_p50 = p50;
        self.max_p99 = p99;
        self
    }
}

pub const LAT_HEAD: &str = "| figure | through agent p50 | p99 | baseline p50 | p99 | ratio p50 | ratio p99 | target | met |\n|---|---|---|---|---|---|---|---|---|\n";

pub fn lat_table(rows: Vec<Lat>) -> String {
    let mut out = String::from(LAT_HEAD);
    for mut r in rows {
        let (p50, p99) = (ms(pct(&mut r.via, 0.5)), ms(pct(&mut r.via, 0.99)));
        let mut target = Vec::new();
        if let Some(t) = r.max_p50 {
            target.push(format!("p50 <= {t}x"));
        }
        if let Some(t) = r.max_p99 {
            target.push(format!("p99 <= {t}x"));
        }
        let target = if target.is_empty() {
            "-".to_string()
        } else {
            target.join(", ")
        };
        match r.base.as_mut() {
            Some(b) if !b.is_empty() => {
                let (b50, b99) = (ms(pct(b, 0.5)), ms(pct(b, 0.99)));
                let (r50, r99) = (p50 / b50, p99 / b99);
                let judged = (r.max_p50.is_some() || r.max_p99.is_some()).then(|| {
                    r.max_p50.is_none_or(|t| r50 <= t) && r.max_p99.is_none_or(|t| r99 <= t)
                });
                out.push_str(&format!(
                    "| {} | {p50:.3} ms | {p99:.3} ms | {b50:.3} ms | {b99:.3} ms | {r50:.2}x | {r99:.2}x | {target} | {} |\n",
                    r.name,
                    met(judged)
                ));
            }
            _ => out.push_str(&format!(
                "| {} | {p50:.3} ms | {p99:.3} ms | - | - | - | - | {target} | - |\n",
                r.name
            )),
        }
    }
    out
}

/// A throughput (or any single-figure) row.
pub struct Thr {
    pub figure: String,
    pub agent: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Thr {
    /// A row with no baseline and no target: a figure to read, not to judge.
    pub fn info(figure: impl Into<String>, agent: impl Into<String>) -> Thr {
        Thr {
            figure: figure.into(),
            agent: agent.into(),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            met: None,
        }
    }
}

pub fn thr_table(rows: &[Thr]) -> String {
    let mut out = String::from(
        "| figure | agent | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.figure,
            r.agent,
            r.baseline,
            r.ratio,
            r.target,
            met(r.met)
        ));
    }
    out
}

/// A field of /proc/PID/status in KiB (`VmRSS:`, `VmHWM:`).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_of_stat(&stat)
}

fn cpu_of_stat(stat: &str) -> f64 {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After ")": state is field 0, utime field 11, stime field 12.
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (t(11) + t(12)) / hz
}

/// Thousands separators, for counts and bytes.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine and the command line, for the top of the report.
pub fn header() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let args: Vec<String> = std::env::args().collect();
    format!(
        "# microvm-agent bench\n\n\
         - machine: {model}, {cores} cores, Linux {kernel}\n\
         - command: `{}`\n\
         - date: {}; load average at start {} (other work on the machine competes for the same cores)\n",
        args.join(" "),
        microvm_local::host::now_rfc3339(),
        load.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(pct(&mut v, 0.5), Duration::from_millis(51));
        assert_eq!(pct(&mut v, 0.99), Duration::from_millis(99));
        assert_eq!(
            pct(&mut [Duration::from_millis(7)], 0.99),
            Duration::from_millis(7)
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn rows_are_judged_against_their_targets() {
        let d = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        let t = lat_table(vec![
            Lat::new("a", d(&[2, 2, 2]), Some(d(&[1, 1, 1]))).target(Some(2.2), Some(2.5)),
            Lat::new("b", d(&[3, 3, 3]), Some(d(&[1, 1, 1]))).target(Some(2.2), Some(2.5)),
            Lat::new("c", d(&[3]), None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].ends_with("| 2.00x | 2.00x | p50 <= 2.2x, p99 <= 2.5x | met |"));
        assert!(lines[3].ends_with("| NOT met |"), "{}", lines[3]);
        assert!(
            lines[4].ends_with("| - | - | - | - | - | - |"),
            "{}",
            lines[4]
        );
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "12 (a b) c) S 1 1 1 0 -1 0 0 0 0 0 300 200 0 0 20 0 1 0";
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!((cpu_of_stat(stat) - 500.0 / hz).abs() < 1e-9);
    }
}
