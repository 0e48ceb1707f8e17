//! What the agent is told: the image config (contract 1) and the host's request
//! bodies (contract 2), parsed strictly with errors that name the field.

pub mod image;
pub mod json;
#[cfg(test)]
mod props;
pub mod run;

pub use image::{ExitPolicy, ImageConfig, LogsSettings, Toggle};
pub use json::{ConfigError, FieldError};
pub use run::{Freshness, RequestError, RunRequest};
