//! Where batches of log events go. A [`Sink`] takes one batch at a time, in order;
//! the pipeline retries transient failures itself, so sinks never retry.
//!
//! Implementations: [`cloudwatch::CloudWatch`] (PutLogEvents), [`Discard`] (a run
//! whose logs go nowhere: every event is dropped and counted with a reason), and in
//! tests a sink that accepts, fails or stalls on demand.

pub mod cloudwatch;

use super::lines::Event;
use std::future::Future;
use std::pin::Pin;

pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivery, PutError>> + Send + 'a>>;

pub trait Sink: Send + Sync {
    /// Deliver one batch (within the PutLogEvents limits, in order).
    fn put<'a>(&'a self, batch: &'a [Event]) -> SinkFuture<'a>;

    /// Whether a batch may go before its oldest event is a second old. Batching by
    /// age saves requests to a service; dropping needs no patience.
    fn immediate(&self) -> bool {
        false
    }

    /// For a sink that drops every event: the reason it is counted under. Capture
    /// then counts lines where they lie instead of making events nobody reads.
    fn discards(&self) -> Option<&'static str> {
        None
    }
}

/// What became of a batch the sink took.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Accepted; the service may still have rejected some events one by one.
    Sent(Rejected),
    /// Deliberately not sent: every event is dropped, counted under this reason.
    Dropped(&'static str),
}

/// Drops every batch with a reason: logging disabled, or no credentials to send with.
pub struct Discard(pub &'static str);

impl Sink for Discard {
    fn put<'a>(&'a self, _batch: &'a [Event]) -> SinkFuture<'a> {
        let reason = self.0;
        Box::pin(async move { Ok(Delivery::Dropped(reason)) })
    }

    fn immediate(&self) -> bool {
        true
    }

    fn discards(&self) -> Option<&'static str> {
        Some(self.0)
    }
}

/// A failed put. Permanent ones (a batch the service calls invalid) are dropped and
/// counted; everything else (throttling, 5xx, network, credentials) is retried, and a
/// refusal of the credentials also tells the pipeline that only new ones will help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PutError {
    message: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transient,
    Permanent,
    Credentials,
}

impl PutError {
    /// Worth retrying: throttling, 5xx, network.
    pub fn transient(message: impl Into<String>) -> Self {
        PutError {
            message: message.into(),
            kind: Kind::Transient,
        }
    }

    /// The service refuses this batch for good; retrying cannot help.
    pub fn permanent(message: impl Into<String>) -> Self {
        PutError {
            message: message.into(),
            kind: Kind::Permanent,
        }
    }

    /// The service refuses the credentials (expired, unknown, denied): retried, but
    /// delivery waits for the host's next credentials.
    pub fn credentials(message: impl Into<String>) -> Self {
        PutError {
            message: message.into(),
            kind: Kind::Credentials,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    pub fn needs_credentials(&self) -> bool {
        self.kind == Kind::Credentials
    }
}

/// AWS error codes that mean the request's credentials are refused, not the request.
pub fn refuses_credentials(code: &str) -> bool {
    matches!(
        code,
        "ExpiredTokenException"
            | "ExpiredToken"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "AccessDeniedException"
            | "AccessDenied"
    )
}

/// Events of an accepted batch that the service rejected one by one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rejected {
    pub too_new_from: Option<usize>,
    pub too_old_to: Option<usize>,
    pub expired_to: Option<usize>,
}

impl Rejected {
    /// Why event `i` of the batch was rejected, if it was.
    pub fn reason(&self, i: usize) -> Option<&'static str> {
        if self.expired_to.is_some_and(|e| i <= e) {
            Some("RejectedExpired")
        } else if self.too_old_to.is_some_and(|e| i <= e) {
            Some("RejectedTooOld")
        } else if self.too_new_from.is_some_and(|s| i >= s) {
            Some("RejectedTooNew")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_refusals_are_told_apart() {
        for c in [
            "ExpiredTokenException",
            "UnrecognizedClientException",
            "AccessDeniedException",
        ] {
            assert!(refuses_credentials(c), "{c}");
        }
        for c in [
            "ThrottlingException",
            "ServiceUnavailableException",
            "InvalidParameterException",
            "",
        ] {
            assert!(!refuses_credentials(c), "{c}");
        }
        assert!(PutError::credentials("x").needs_credentials());
        assert!(!PutError::credentials("x").is_permanent());
        assert!(!PutError::transient("x").needs_credentials());
    }

    #[test]
    fn rejected_indices() {
        let r = Rejected {
            too_new_from: Some(8),
            too_old_to: Some(2),
            expired_to: Some(0),
        };
        let reasons: Vec<_> = (0..10).map(|i| r.reason(i)).collect();
        assert_eq!(reasons[0], Some("RejectedExpired"));
        assert_eq!(reasons[1], Some("RejectedTooOld"));
        assert_eq!(reasons[2], Some("RejectedTooOld"));
        assert_eq!(reasons[3..8], [None; 5]);
        assert_eq!(reasons[8], Some("RejectedTooNew"));
        assert_eq!(Rejected::default().reason(0), None);
    }
}
