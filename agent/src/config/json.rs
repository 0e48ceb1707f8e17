//! JSON parsing that names the field at fault.
//!
//! Parsing is strict: unknown fields and out-of-range values are errors that name the
//! field by its JSON path, because the person reading the error is an image author
//! looking at their `image.json` or a host developer looking at a request, not at our
//! source.

use serde::de::DeserializeOwned;

/// A config or request that failed validation; `field` is the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read image config {path}: {source} (pass --image-config PATH or put it at /etc/microvm/image.json)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid image config {path}: {error}")]
    Invalid { path: String, error: FieldError },
}

/// Deserialize JSON and report the path of the first bad field (`hooks.port`, ...).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(body)".to_string()
        } else {
            path
        };
        // serde_json appends " at line L column C", which is noise next to a field path.
        let msg = e.inner().to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        FieldError::new(field, msg)
    })
}
