//! The control channel's error contract: every error answer is an [`ApiError`],
//! `{"error": CODE, "message": ..., "field"?: ..., "state"?: ...}`, and its HTTP
//! status follows from the code alone.

use crate::status::State;
use serde::{Deserialize, Serialize};

/// Every error code the control channel answers with, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 400: the body is not what the path takes; `field` names the culprit.
    BadRequest,
    /// 403: the run did not enable what the request needs (shell ingress).
    Forbidden,
    /// 404: no such path (of the API, or of a file).
    NotFound,
    /// 405: wrong method (the answer carries `Allow`).
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 409: the current state does not allow the request; `state` says which it is.
    InvalidState,
    /// 413: body or payload too large.
    PayloadTooLarge,
    /// 429: too many exec sessions at once.
    TooManySessions,
    /// 507: the guest's disk is full.
    InsufficientStorage,
    /// 500: the image config is invalid; only `/terminate` works.
    ImageConfigInvalid,
    /// 500: the guest clock could not be stepped.
    ClockStepFailed,
    /// 500: the entropy pool could not be fed or reseeded.
    EntropyFailed,
    /// 500: the guest could not be made safe to snapshot.
    QuiesceFailed,
    /// 500: a bug in the agent; the message says what.
    InternalError,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::InvalidState => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManySessions => 429,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::ImageConfigInvalid
            | ErrorCode::ClockStepFailed
            | ErrorCode::EntropyFailed
            | ErrorCode::QuiesceFailed
            | ErrorCode::InternalError => 500,
        }
    }
}

/// An error answer of the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorCode,
    pub message: String,
    /// The JSON path of the field at fault (400, 413).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The state that refused the request (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

impl ApiError {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            error,
            message: message.into(),
            field: None,
            state: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    pub fn status(&self) -> u16 {
        self.error.status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.error, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let e = ApiError::new(ErrorCode::InvalidState, "no").with_state(State::Suspending);
        assert_eq!(e.status(), 409);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"error":"InvalidState","message":"no","state":"SUSPENDING"})
        );
        let back: ApiError =
            serde_json::from_str(r#"{"error":"BadRequest","message":"m","field":"a.b"}"#).unwrap();
        assert_eq!(
            back,
            ApiError::new(ErrorCode::BadRequest, "m").with_field("a.b")
        );
    }
}
