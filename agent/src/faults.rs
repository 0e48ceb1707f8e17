//! Faults on demand for the test suites: a wedged disk, a panic. Compiled in only with
//! the `test-faults` feature (the suites' build); in the shipped binary every check
//! is a constant `false`, so no environment variable or request can trigger one.

/// Is fault `name` switched on (`MICROVM_TEST_FAULT_<name>` set)?
pub fn active(name: &str) -> bool {
    value(name).is_some()
}

/// The value of fault `name`, if it is switched on.
pub fn value(name: &str) -> Option<String> {
    #[cfg(feature = "test-faults")]
    {
        std::env::var_os(format!("MICROVM_TEST_FAULT_{name}"))
            .map(|v| v.to_string_lossy().into_owned())
    }
    #[cfg(not(feature = "test-faults"))]
    {
        let _ = name;
        None
    }
}

/// `FATAL_ON_EVENTS=overflow|abort|segv`: what no panic hook catches, on demand.
#[cfg(feature = "test-faults")]
pub fn fatal(kind: &str) {
    tracing::warn!(kind, "test fault: fatal");
    match kind {
        "overflow" => {
            std::hint::black_box(deeper(0));
        }
        "segv" => {
            // SAFETY (of the fault, on purpose): a read of an address nothing maps.
            let p = std::hint::black_box(8usize) as *const u64;
            std::hint::black_box(unsafe { std::ptr::read_volatile(p) });
        }
        _ => std::process::abort(),
    }
}

#[cfg(not(feature = "test-faults"))]
pub fn fatal(_kind: &str) {}

/// Recursion the optimiser cannot fold: every frame keeps a page alive.
#[cfg(feature = "test-faults")]
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 512]);
    if n == u64::MAX {
        return frame[0];
    }
    deeper(n + 1).wrapping_add(frame[511])
}

/// `WEDGED_SYNC`: every sync(2) blocks forever, as on storage that stopped answering.
pub fn sync() {
    if active("WEDGED_SYNC") {
        tracing::warn!("test fault: sync wedged");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    nix::unistd::sync();
}

#[cfg(test)]
mod tests {
    #[test]
    fn faults_are_off_unless_built_for_tests_and_asked_for() {
        assert!(!super::active("NO_SUCH_FAULT"));
        std::env::set_var("MICROVM_TEST_FAULT_UNIT_PROBE", "1");
        assert_eq!(super::active("UNIT_PROBE"), cfg!(feature = "test-faults"));
    }
}
