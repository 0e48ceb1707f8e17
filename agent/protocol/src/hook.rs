//! The public *Lambda MicroVMs Application Hook Interface*: the application answers
//! `POST /aws/lambda-microvms/runtime/v1/<hook>` on its hooks port. The host speaks
//! the same paths to the agent on the control channel.

use serde::{Deserialize, Serialize};

/// Every hook path starts with this.
pub const HOOK_PATH_PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";

/// The six hooks of the interface, and the agent's lifecycle operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ready,
    Validate,
    Run,
    Resume,
    Suspend,
    Terminate,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::Ready,
        Hook::Validate,
        Hook::Run,
        Hook::Resume,
        Hook::Suspend,
        Hook::Terminate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Ready => "ready",
            Hook::Validate => "validate",
            Hook::Run => "run",
            Hook::Resume => "resume",
            Hook::Suspend => "suspend",
            Hook::Terminate => "terminate",
        }
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The hook a request path names, if any.
    pub fn from_path(path: &str) -> Option<Hook> {
        Hook::from_name(path.strip_prefix(HOOK_PATH_PREFIX)?)
    }

    /// `ready` and `validate` belong to the image-build phase, with longer timeouts,
    /// and only they may answer 503 "not yet".
    pub fn is_image_build(self) -> bool {
        matches!(self, Hook::Ready | Hook::Validate)
    }

    pub fn path(self) -> String {
        format!("{HOOK_PATH_PREFIX}{}", self.name())
    }
}

/// The body of the application's `/run`: who this MicroVM is and what the caller of
/// run-microvm passed. Exactly these two fields reach the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunHookBody {
    pub microvm_id: String,
    #[serde(default)]
    pub run_hook_payload: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_round_trip() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_name(h.name()), Some(h));
            assert_eq!(Hook::from_path(&h.path()), Some(h));
            assert_eq!(serde_json::to_value(h).unwrap(), h.name());
        }
        assert_eq!(Hook::from_path("/aws/lambda-microvms/runtime/v1/Run"), None);
        assert_eq!(Hook::from_path("/run"), None);
    }
}
