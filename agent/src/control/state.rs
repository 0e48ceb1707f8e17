//! The lifecycle state machine as pure functions over (state, request).
//!
//! The stored state is a settled `Base` plus at most one operation in flight; the
//! states the host sees (`SUSPENDING`, `TERMINATING`) are derived from the operation in
//! flight rather than stored, so they can never disagree with it.

/// A settled state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Pending,
    Running,
    Suspended,
    Terminated,
}

pub use microvm_protocol::status::State;
/// The lifecycle operations are the hooks of the interface, one per transition.
use microvm_protocol::Hook;

/// The state the host sees: the settled one, or the operation in flight if it has a
/// name of its own.
pub fn phase(base: Base, in_flight: Option<Hook>) -> State {
    match (in_flight, base) {
        (Some(Hook::Terminate), _) => State::Terminating,
        (Some(Hook::Suspend), _) => State::Suspending,
        (_, Base::Pending) => State::Pending,
        (_, Base::Running) => State::Running,
        (_, Base::Suspended) => State::Suspended,
        (_, Base::Terminated) => State::Terminated,
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

pub fn decide(base: Base, in_flight: Option<Hook>, op: Hook) -> Decision {
    use Decision::*;
    // Terminate is allowed from anywhere and preempts whatever is in flight.
    if op == Hook::Terminate {
        return match (base, in_flight) {
            (Base::Terminated, _) => Replay,
            (_, Some(Hook::Terminate)) => Join,
            _ => Start,
        };
    }
    if base == Base::Terminated {
        return Reject;
    }
    match in_flight {
        // Only one /run may ever win; a second one is a host bug, not a retry.
        Some(Hook::Run) if op == Hook::Run => Reject,
        Some(f) if f == op => Join,
        Some(_) => Reject,
        None => match (op, base) {
            (Hook::Ready | Hook::Validate | Hook::Run, Base::Pending) => Start,
            (Hook::Suspend, Base::Running) => Start,
            (Hook::Suspend, Base::Suspended) => Replay,
            (Hook::Resume, Base::Suspended) => Start,
            _ => Reject,
        },
    }
}

/// The settled state after `op` completed. A failed transition returns to where it
/// started, so the host can retry it or terminate.
pub fn complete(base: Base, op: Hook, success: bool) -> Base {
    match (op, success) {
        (Hook::Terminate, _) => Base::Terminated,
        (Hook::Run, true) | (Hook::Resume, true) => Base::Running,
        (Hook::Suspend, true) => Base::Suspended,
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
    fn expected(base: Base, in_flight: Option<Hook>, op: Hook) -> Decision {
        match (base, in_flight, op) {
            (Base::Terminated, _, Hook::Terminate) => Replay,
            (_, Some(Hook::Terminate), Hook::Terminate) => Join,
            (_, _, Hook::Terminate) => Start,
            (Base::Terminated, _, _) => Reject,
            (_, Some(Hook::Terminate), _) => Reject,
            (Base::Pending, None, Hook::Ready | Hook::Validate | Hook::Run) => Start,
            (Base::Pending, Some(Hook::Ready), Hook::Ready) => Join,
            (Base::Pending, Some(Hook::Validate), Hook::Validate) => Join,
            (Base::Running, None, Hook::Suspend) => Start,
            (Base::Running, Some(Hook::Suspend), Hook::Suspend) => Join,
            (Base::Suspended, None, Hook::Suspend) => Replay,
            (Base::Suspended, None, Hook::Resume) => Start,
            (Base::Suspended, Some(Hook::Resume), Hook::Resume) => Join,
            _ => Reject,
        }
    }

    /// Which operations can actually be in flight from each base.
    fn reachable(base: Base, in_flight: Option<Hook>) -> bool {
        matches!(
            (base, in_flight),
            (_, None)
                | (_, Some(Hook::Terminate))
                | (
                    Base::Pending,
                    Some(Hook::Ready | Hook::Validate | Hook::Run)
                )
                | (Base::Running, Some(Hook::Suspend))
                | (Base::Suspended, Some(Hook::Resume))
        )
    }

    #[test]
    fn every_state_and_request_pair() {
        let mut checked = 0;
        for base in BASES {
            for in_flight in std::iter::once(None).chain(Hook::ALL.map(Some)) {
                if !reachable(base, in_flight) {
                    continue;
                }
                for op in Hook::ALL {
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
        assert_eq!(decide(Base::Pending, Some(Hook::Run), Hook::Run), Reject);
        assert_eq!(decide(Base::Running, None, Hook::Run), Reject);
    }

    #[test]
    fn suspend_and_terminate_are_idempotent() {
        assert_eq!(
            decide(Base::Running, Some(Hook::Suspend), Hook::Suspend),
            Join
        );
        assert_eq!(decide(Base::Suspended, None, Hook::Suspend), Replay);
        assert_eq!(
            decide(Base::Running, Some(Hook::Terminate), Hook::Terminate),
            Join
        );
        assert_eq!(decide(Base::Terminated, None, Hook::Terminate), Replay);
    }

    #[test]
    fn derived_phases() {
        assert_eq!(phase(Base::Running, Some(Hook::Suspend)), State::Suspending);
        assert_eq!(
            phase(Base::Pending, Some(Hook::Terminate)),
            State::Terminating
        );
        assert_eq!(phase(Base::Pending, Some(Hook::Run)), State::Pending);
        assert_eq!(phase(Base::Suspended, Some(Hook::Resume)), State::Suspended);
        assert_eq!(phase(Base::Terminated, None), State::Terminated);
        assert_eq!(State::Suspending.as_str(), "SUSPENDING");
    }

    #[test]
    fn completion_moves_or_returns() {
        let table = [
            (Base::Pending, Hook::Run, true, Base::Running),
            (Base::Pending, Hook::Run, false, Base::Pending),
            (Base::Pending, Hook::Ready, true, Base::Pending),
            (Base::Pending, Hook::Validate, false, Base::Pending),
            (Base::Running, Hook::Suspend, true, Base::Suspended),
            (Base::Running, Hook::Suspend, false, Base::Running),
            (Base::Suspended, Hook::Resume, true, Base::Running),
            (Base::Suspended, Hook::Resume, false, Base::Suspended),
            (Base::Running, Hook::Terminate, false, Base::Terminated),
            (Base::Suspended, Hook::Terminate, true, Base::Terminated),
        ];
        for (base, op, ok, want) in table {
            assert_eq!(complete(base, op, ok), want, "{base:?} {op:?} {ok}");
        }
    }
}
