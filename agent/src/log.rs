//! The agent's own log: to the console (through [`crate::console`]'s queue), stamped with the guest's boot clock
//! like the kernel's, so a reader can line it up with dmesg and measure boot; and to
//! journald as well when its socket exists (an image that runs one). Never into the
//! application's log stream.

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

struct BootClock;

impl FormatTime for BootClock {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| (t.tv_sec(), t.tv_nsec() / 1000))
            .unwrap_or((0, 0));
        write!(w, "[{:5}.{:06}]", t.0, t.1)
    }
}

/// `level` (from `microvm.log=`) wins over `MICROVM_AGENT_LOG`; default info.
pub fn init(level: Option<&str>) {
    let level = level
        .map(str::to_string)
        .or_else(|| std::env::var("MICROVM_AGENT_LOG").ok())
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    let console = tracing_subscriber::fmt::layer()
        .with_writer(crate::console::LogWriter)
        .with_timer(BootClock)
        .with_ansi(false)
        .with_target(false);
    // Fails (and is skipped) when /run/systemd/journal/socket does not answer.
    let journald = tracing_journald::layer().ok();
    let _ = tracing_subscriber::registry()
        .with(console.with_filter(LevelFilter::from_level(level)))
        .with(journald.with_filter(LevelFilter::from_level(level)))
        .try_init();
}
