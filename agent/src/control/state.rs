//! The lifecycle state machine as pure functions over (state, request).
//!
//! The stored state is a settled `Base` plus at most one operation in flight; the
//! states the host sees (`SUSPENDING`, `TERMINATING`) are derived from the operation in
//! flight rather than stored, so they can never disagree with it.

use serde::Serialize;

/// A settled state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Pending,
    Running,
    Suspended,
    Terminated,
}

/// A request that moves (or probes) the lifecycle: one per hook of the interface.
pub use crate::config::Hook as Op;

/// What the host sees in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Pending,
    Running,
    Suspending,
    Suspended,
    Terminating,
    Terminated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Suspending => "SUSPENDING",
            Phase::Suspended => "SUSPENDED",
            Phase::Terminating => "TERMINATING",
            Phase::Terminated => "TERMINATED",
        }
    }
}

pub fn phase(base: Base, in_flight: Option<Op>) -> Phase {
    match (in_flight, base) {
        (Some(Op::Terminate), _) => Phase::Terminating,
        (Some(Op::Suspend), _) => Phase::Suspending,
        (_, Base::Pending) => Phase::Pending,
        (_, Base::Running) => Phase::Running,
        (_, Base::Suspended) => Phase::Suspended,
        (_, Base::Terminated) => Phase::Terminated,
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Begin the operation; it becomes the one in flight.
    Start,
    /// The same operation is already in flight: wait for its answer, do not run it again.
    Join,
    /// The operation already completed for this transition: answer what it answered.
    Replay,
    /// Not allowed in this state: 409.
    Reject,
}

pub fn decide(base: Base, in_flight: Option<Op>, op: Op) -> Decision {
    use Decision::*;
    // Terminate is allowed from anywhere and preempts whatever is in flight.
    if op == Op::Terminate {
        return match (base, in_flight) {
            (Base::Terminated, _) => Replay,
            (_, Some(Op::Terminate)) => Join,
            _ => Start,
        };
    }
    if base == Base::Terminated {
        return Reject;
    }
    match in_flight {
        // Only one /run may ever win; a second one is a host bug, not a retry.
        Some(Op::Run) if op == Op::Run => Reject,
        Some(f) if f == op => Join,
        Some(_) => Reject,
        None => match (op, base) {
            (Op::Ready | Op::Validate | Op::Run, Base::Pending) => Start,
            (Op::Suspend, Base::Running) => Start,
            (Op::Suspend, Base::Suspended) => Replay,
            (Op::Resume, Base::Suspended) => Start,
            _ => Reject,
        },
    }
}

/// The settled state after `op` completed. A failed transition returns to where it
/// started, so the host can retry it or terminate.
pub fn complete(base: Base, op: Op, success: bool) -> Base {
    match (op, success) {
        (Op::Terminate, _) => Base::Terminated,
        (Op::Run, true) | (Op::Resume, true) => Base::Running,
        (Op::Suspend, true) => Base::Suspended,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    const BASES: [Base; 4] = [
        Base::Pending,
        Base::Running,
        Base::Suspended,
        Base::Terminated,
    ];

    /// The whole table, written out: every (base, in flight, op) triple.
    fn expected(base: Base, in_flight: Option<Op>, op: Op) -> Decision {
        match (base, in_flight, op) {
            (Base::Terminated, _, Op::Terminate) => Replay,
            (_, Some(Op::Terminate), Op::Terminate) => Join,
            (_, _, Op::Terminate) => Start,
            (Base::Terminated, _, _) => Reject,
            (_, Some(Op::Terminate), _) => Reject,
            (Base::Pending, None, Op::Ready | Op::Validate | Op::Run) => Start,
            (Base::Pending, Some(Op::Ready), Op::Ready) => Join,
            (Base::Pending, Some(Op::Validate), Op::Validate) => Join,
            (Base::Running, None, Op::Suspend) => Start,
            (Base::Running, Some(Op::Suspend), Op::Suspend) => Join,
            (Base::Suspended, None, Op::Suspend) => Replay,
            (Base::Suspended, None, Op::Resume) => Start,
            (Base::Suspended, Some(Op::Resume), Op::Resume) => Join,
            _ => Reject,
        }
    }

    /// Which operations can actually be in flight from each base.
    fn reachable(base: Base, in_flight: Option<Op>) -> bool {
        matches!(
            (base, in_flight),
            (_, None)
                | (_, Some(Op::Terminate))
                | (Base::Pending, Some(Op::Ready | Op::Validate | Op::Run))
                | (Base::Running, Some(Op::Suspend))
                | (Base::Suspended, Some(Op::Resume))
        )
    }

    #[test]
    fn every_state_and_request_pair() {
        let mut checked = 0;
        for base in BASES {
            for in_flight in std::iter::once(None).chain(Op::ALL.map(Some)) {
                if !reachable(base, in_flight) {
                    continue;
                }
                for op in Op::ALL {
                    assert_eq!(
                        decide(base, in_flight, op),
                        expected(base, in_flight, op),
                        "{base:?} in flight {in_flight:?}, request {op:?}"
                    );
                    checked += 1;
                }
            }
        }
        // 4 bases x (idle + terminating) + 3 + 1 + 1 in-flight states, 6 requests each.
        assert_eq!(checked, (4 * 2 + 5) * 6);
    }

    #[test]
    fn a_second_run_is_rejected_not_joined() {
        assert_eq!(decide(Base::Pending, Some(Op::Run), Op::Run), Reject);
        assert_eq!(decide(Base::Running, None, Op::Run), Reject);
    }

    #[test]
    fn suspend_and_terminate_are_idempotent() {
        assert_eq!(decide(Base::Running, Some(Op::Suspend), Op::Suspend), Join);
        assert_eq!(decide(Base::Suspended, None, Op::Suspend), Replay);
        assert_eq!(
            decide(Base::Running, Some(Op::Terminate), Op::Terminate),
            Join
        );
        assert_eq!(decide(Base::Terminated, None, Op::Terminate), Replay);
    }

    #[test]
    fn derived_phases() {
        assert_eq!(phase(Base::Running, Some(Op::Suspend)), Phase::Suspending);
        assert_eq!(
            phase(Base::Pending, Some(Op::Terminate)),
            Phase::Terminating
        );
        assert_eq!(phase(Base::Pending, Some(Op::Run)), Phase::Pending);
        assert_eq!(phase(Base::Suspended, Some(Op::Resume)), Phase::Suspended);
        assert_eq!(phase(Base::Terminated, None), Phase::Terminated);
        assert_eq!(Phase::Suspending.as_str(), "SUSPENDING");
    }

    #[test]
    fn completion_moves_or_returns() {
        let table = [
            (Base::Pending, Op::Run, true, Base::Running),
            (Base::Pending, Op::Run, false, Base::Pending),
            (Base::Pending, Op::Ready, true, Base::Pending),
            (Base::Pending, Op::Validate, false, Base::Pending),
            (Base::Running, Op::Suspend, true, Base::Suspended),
            (Base::Running, Op::Suspend, false, Base::Running),
            (Base::Suspended, Op::Resume, true, Base::Running),
            (Base::Suspended, Op::Resume, false, Base::Suspended),
            (Base::Running, Op::Terminate, false, Base::Terminated),
            (Base::Suspended, Op::Terminate, true, Base::Terminated),
        ];
        for (base, op, ok, want) in table {
            assert_eq!(complete(base, op, ok), want, "{base:?} {op:?} {ok}");
        }
    }
}
