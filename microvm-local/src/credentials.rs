//! The execution role's credentials for a local run. The platform assumes the role and
//! hands the guest temporary credentials; locally they come from this machine's
//! environment (the variables the AWS CLI reads first), or, without any, are
//! generated for a local test server (which checks signatures' form, never keys). The
//! agent warns 20 minutes before they expire (`credentialsExpiring`); the session
//! answers with the next set (`POST /v1/credentials`).

use microvm_protocol::run::Credentials;

/// Lifetime of generated credentials (the platform's sessions last an hour too).
pub const GENERATED_LIFETIME_S: u64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_CREDENTIAL_EXPIRATION`, read again at every rotation.
    Environment,
    /// Random keys in the form of temporary ones (`ASIA...`), for a local server.
    Generated { lifetime_s: u64 },
}

impl Source {
    /// The environment if it holds a key pair, else generated keys.
    pub fn pick(get: impl Fn(&str) -> Option<String>, lifetime_s: u64) -> Source {
        if get("AWS_ACCESS_KEY_ID").is_some() && get("AWS_SECRET_ACCESS_KEY").is_some() {
            Source::Environment
        } else {
            Source::Generated { lifetime_s }
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Source::Environment => "from this machine's environment",
            Source::Generated { .. } => "generated for a local server",
        }
    }

    /// The next set of credentials, valid from `now` (Unix seconds).
    pub fn next(self, get: impl Fn(&str) -> Option<String>, now: u64) -> Credentials {
        match self {
            Source::Environment => Credentials {
                access_key_id: get("AWS_ACCESS_KEY_ID").unwrap_or_default(),
                secret_access_key: get("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
                session_token: get("AWS_SESSION_TOKEN"),
                expiration: get("AWS_CREDENTIAL_EXPIRATION"),
            },
            Source::Generated { lifetime_s } => {
                let key = crate::host::random(10);
                Credentials {
                    access_key_id: format!("ASIA{}", base32(&key)),
                    secret_access_key: crate::host::hex(&crate::host::random(20)),
                    session_token: Some(crate::host::hex(&crate::host::random(48))),
                    expiration: Some(crate::host::rfc3339(now + lifetime_s)),
                }
            }
        }
    }
}

/// Upper-case letters and digits 2-7, as access key ids are.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_environment_first_as_the_cli_does() {
        let e = [
            ("AWS_ACCESS_KEY_ID", "AKIAHOST"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", "t"),
        ];
        let src = Source::pick(env(&e), 3600);
        assert_eq!(src, Source::Environment);
        let c = src.next(env(&e), 0);
        assert_eq!(c.access_key_id, "AKIAHOST");
        assert_eq!(c.session_token.as_deref(), Some("t"));
        assert_eq!(c.expiration, None);
        assert_eq!(
            Source::pick(env(&[("AWS_ACCESS_KEY_ID", "a")]), 60),
            Source::Generated { lifetime_s: 60 }
        );
    }

    #[test]
    fn generated_keys_look_temporary_and_differ_every_time() {
        let src = Source::Generated { lifetime_s: 3600 };
        let a = src.next(env(&[]), 1_800_000_000);
        let b = src.next(env(&[]), 1_800_000_000);
        assert!(
            a.access_key_id.starts_with("ASIA") && a.access_key_id.len() == 20,
            "{a:?}"
        );
        assert!(a.access_key_id[4..]
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_eq!(a.expiration.as_deref(), Some("2027-01-15T09:00:00Z"));
        assert_eq!(a.secret_access_key.len(), 40);
    }
}
