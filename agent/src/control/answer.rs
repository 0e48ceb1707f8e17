//! An answer to the host: a status and a JSON body. Errors are always an
//! [`ApiError`], so the error contract reads in one place (`microvm_protocol::error`).

use microvm_protocol::{ApiError, ErrorCode};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn new(status: u16, body: Value) -> Self {
        Answer { status, body }
    }

    /// 200 with a typed body of the wire contract.
    pub fn ok<T: serde::Serialize>(body: &T) -> Self {
        Self::typed(200, body)
    }

    /// `status` with a typed body of the wire contract.
    pub fn typed<T: serde::Serialize>(status: u16, body: &T) -> Self {
        match serde_json::to_value(body) {
            Ok(v) => Answer::new(status, v),
            Err(e) => ApiError::new(ErrorCode::InternalError, format!("encoding: {e}")).into(),
        }
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        // ApiError is plain data: serialising it cannot fail.
        let body = serde_json::to_value(&e).unwrap_or(Value::Null);
        Answer { status, body }
    }
}
