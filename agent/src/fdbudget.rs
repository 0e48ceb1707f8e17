//! One descriptor table for everything the agent serves. The host's control channel,
//! hook calls, log pipes and syncs live in a reserve nobody else may touch; the
//! servers that strangers can reach (ingress clients, the application's metadata and
//! lease clients) get shares of the rest, so no flood of one of them can make the
//! host's `/terminate` fail with EMFILE. Past its share a server stops accepting, and
//! clients wait in the listen backlog.

/// Descriptors kept for the control channel's connections, hook calls, log pipes,
/// sync, and the agent's own files.
pub const RESERVE: u64 = 64;

/// Open-at-once limits derived from the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Ingress connections (two descriptors each: the client's and the application's).
    pub ingress: usize,
    /// Metadata-service connections.
    pub metadata: usize,
    /// Keep-awake leases.
    pub leases: usize,
}

/// Half of what is left past the reserve to ingress, an eighth each to metadata and
/// leases (neither needs more than a few in a sane guest), a quarter kept free on top
/// of the reserve. None is ever zero.
pub fn split(nofile_limit: u64) -> Budget {
    let free = nofile_limit.saturating_sub(RESERVE);
    let count = |n: u64, most: u64| usize::try_from(n.clamp(1, most)).unwrap_or(usize::MAX);
    Budget {
        ingress: count(free / 4, u64::MAX),
        metadata: count(free / 8, 256),
        leases: count(free / 8, 4096),
    }
}

/// The budget under this process's descriptor limit (raised to the hard limit at boot).
pub fn current() -> Budget {
    use nix::sys::resource::{getrlimit, Resource};
    split(getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(b: Budget) -> u64 {
        2 * b.ingress as u64 + b.metadata as u64 + b.leases as u64
    }

    #[test]
    fn every_share_together_leaves_the_reserve_and_a_quarter_free() {
        for limit in [128, 256, 1024, 4096, 65_536, 1 << 20] {
            let b = split(limit);
            assert!(
                descriptors(b) + RESERVE + (limit - RESERVE) / 4 <= limit,
                "{limit}: {b:?}"
            );
        }
        assert_eq!(
            split(256),
            Budget {
                ingress: 48,
                metadata: 24,
                leases: 24
            }
        );
        assert_eq!(split(1 << 20).metadata, 256);
    }

    #[test]
    fn no_share_is_ever_zero() {
        for limit in [0, 1, 10, RESERVE, RESERVE + 3, u64::MAX] {
            let b = split(limit);
            assert!(
                b.ingress > 0 && b.metadata > 0 && b.leases > 0,
                "{limit}: {b:?}"
            );
        }
    }
}
