//! Percentiles and the markdown the report is made of.

use std::time::Duration;

pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One request kind: its latencies through the agent, and straight to the app if
/// there is such a baseline.
pub struct Row(pub String, pub Vec<Duration>, pub Option<Vec<Duration>>);

/// The hook latency table.
pub fn table(rows: Vec<Row>) -> String {
    let mut out = String::from("| request | through agent p50 | p99 | direct to app p50 | p99 | ratio p50 | ratio p99 |\n|---|---|---|---|---|---|---|\n");
    for Row(name, mut t, d) in rows {
        let (p50, p99) = (pct(&mut t, 0.5), pct(&mut t, 0.99));
        match d {
            Some(mut d) => {
                let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
                out.push_str(&format!(
                    "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2}x | {:.2}x |\n",
                    ms(p50),
                    ms(p99),
                    ms(d50),
                    ms(d99),
                    ms(p50) / ms(d50),
                    ms(p99) / ms(d99)
                ));
            }
            None => out.push_str(&format!(
                "| {name} | {:.3} ms | {:.3} ms | - | - | - | - |\n",
                ms(p50),
                ms(p99)
            )),
        }
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
    }
}
