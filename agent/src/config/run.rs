//! The host's request bodies on the control channel (DESIGN.md contract 2), validated:
//! `/run`, `/resume`, and the hooks that take no fields.

use super::image::validate_logging;
use super::json::{from_json_objects, FieldError};
use microvm_protocol::limits::{
    MAX_DURATION_SECONDS, MAX_MICROVM_ID, MAX_RUN_HOOK_PAYLOAD, MIN_ENTROPY_BYTES, MIN_IDLE_SECONDS,
};
use microvm_protocol::run::{
    Clock, Credentials, Empty, IdlePolicy, Logging, ResumeEnvelope, RunEnvelope,
};
use std::time::Duration;

/// The parts of `/run` and `/resume` that refresh a guest that may be a snapshot copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Freshness {
    pub clock: Option<Clock>,
    pub entropy: Option<Vec<u8>>,
    pub credentials: Option<Credentials>,
}

/// The host's `/run` body, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub microvm_id: String,
    pub run_hook_payload: String,
    pub logging: Option<Logging>,
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration: Option<Duration>,
    pub region: Option<String>,
    /// `endpoints.logs`: where the agent sends the application's logs this run.
    pub logs_endpoint: Option<String>,
    /// Test only (`testMinIdleSeconds`): the lowered minimum idle duration.
    pub test_min_idle: Option<Duration>,
    pub fresh: Freshness,
}

/// Why a request body was refused: 400 or 413 to the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    TooLarge(FieldError),
}

impl From<FieldError> for RequestError {
    fn from(e: FieldError) -> Self {
        RequestError::Invalid(e)
    }
}

fn decode_entropy(b64: Option<String>) -> Result<Option<Vec<u8>>, FieldError> {
    use base64::Engine;
    let Some(s) = b64 else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| FieldError::new("entropy", format!("not valid base64: {e}")))?;
    if bytes.len() < MIN_ENTROPY_BYTES {
        return Err(FieldError::new(
            "entropy",
            format!(
                "must carry at least {MIN_ENTROPY_BYTES} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// An empty body means "no fields" for the hooks that need none.
fn body_or_empty(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

impl RunRequest {
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let raw: RunEnvelope = from_json_objects(body, &[])?;
        let microvm_id = match raw.microvm_id {
            None => return Err(FieldError::new("microvmId", "is required").into()),
            Some(id) if id.is_empty() || id.len() > MAX_MICROVM_ID => {
                return Err(FieldError::new(
                    "microvmId",
                    format!("must be 1-{MAX_MICROVM_ID} bytes of UTF-8"),
                )
                .into())
            }
            Some(id) => id,
        };
        if raw.run_hook_payload.len() > MAX_RUN_HOOK_PAYLOAD {
            return Err(RequestError::TooLarge(FieldError::new(
                "runHookPayload",
                format!(
                    "is {} bytes; at most {MAX_RUN_HOOK_PAYLOAD} are allowed",
                    raw.run_hook_payload.len()
                ),
            )));
        }
        if let Some(l) = &raw.logging {
            validate_logging(l, "logging")?;
        }
        if let Some(p) = &raw.idle_policy {
            if p.max_idle_duration_seconds == 0 {
                return Err(FieldError::new(
                    "idlePolicy.maxIdleDurationSeconds",
                    "must be at least 1",
                )
                .into());
            }
        }
        if let Some(d) = raw.maximum_duration_in_seconds {
            if !(1..=MAX_DURATION_SECONDS).contains(&d) {
                return Err(FieldError::new(
                    "maximumDurationInSeconds",
                    format!("must be 1-{MAX_DURATION_SECONDS}, got {d}"),
                )
                .into());
            }
        }
        if let Some(r) = &raw.region {
            if !valid_region(r) {
                return Err(FieldError::new(
                    "region",
                    "must be an AWS region name such as us-east-1 (1-63 of [a-z0-9-], \
                     starting and ending with a letter or digit)",
                )
                .into());
            }
        }
        if let Some(n) = raw.test_min_idle_seconds {
            // It only ever lowers the platform's minimum.
            if n > MIN_IDLE_SECONDS {
                return Err(FieldError::new(
                    "testMinIdleSeconds",
                    format!("must be 0-{MIN_IDLE_SECONDS} (test only), got {n}"),
                )
                .into());
            }
        }
        let logs_endpoint = raw.endpoints.and_then(|e| e.logs);
        if let Some(url) = &logs_endpoint {
            valid_endpoint(url).map_err(|why| FieldError::new("endpoints.logs", why))?;
        }
        Ok(RunRequest {
            logs_endpoint,
            microvm_id,
            run_hook_payload: raw.run_hook_payload,
            logging: raw.logging,
            idle_policy: raw.idle_policy,
            maximum_duration: raw.maximum_duration_in_seconds.map(Duration::from_secs),
            region: raw.region,
            test_min_idle: raw.test_min_idle_seconds.map(Duration::from_secs),
            fresh: Freshness {
                clock: raw.clock,
                entropy: decode_entropy(raw.entropy)?,
                credentials: raw.credentials,
            },
        })
    }

    /// Exactly what the application's `/run` hook receives.
    pub fn app_body(&self) -> Vec<u8> {
        let body = microvm_protocol::RunHookBody {
            microvm_id: self.microvm_id.clone(),
            run_hook_payload: self.run_hook_payload.clone(),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The host's `/resume` body (all optional).
pub fn parse_resume(body: &[u8]) -> Result<Freshness, RequestError> {
    let raw: ResumeEnvelope = from_json_objects(body_or_empty(body), &[])?;
    Ok(Freshness {
        clock: raw.clock,
        entropy: decode_entropy(raw.entropy)?,
        credentials: raw.credentials,
    })
}

/// `/ready`, `/validate`, `/suspend`, `/terminate` take no fields: empty or `{}`.
pub fn parse_empty(body: &[u8]) -> Result<(), RequestError> {
    let _: Empty = from_json_objects(body_or_empty(body), &[])?;
    Ok(())
}

/// An endpoint URL: `http://` or `https://`, a host, at most 2,048 bytes, nothing that
/// is not printable ASCII (it ends up in request lines and in status).
pub fn valid_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if url.len() > 2048 {
        return Err(format!("is {} bytes; at most 2048 are allowed", url.len()));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err("must name a host (and no user info)".into());
    }
    Ok(())
}

/// An AWS region name: a DNS label of lowercase letters, digits and hyphens (the
/// SDKs put it in host names). Nothing else gets through: the region is written into
/// places the application's SDK reads, where a newline or a `;` would be an injection.
pub fn valid_region(r: &str) -> bool {
    let b = r.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn endpoints_are_plain_http_urls_with_a_host() {
        for ok in [
            "http://10.0.2.100:4566",
            "https://logs.eu-west-1.amazonaws.com",
            "http://[::1]:80/",
        ] {
            assert_eq!(valid_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://:80",
            "http://a b",
            "http://x\nnewline",
            "http://user@x",
            "10.0.2.100:4566",
        ] {
            assert!(valid_endpoint(bad).is_err(), "{bad:?}");
        }
        assert!(valid_endpoint(&format!("http://{}", "a".repeat(2050))).is_err());
        let run = RunRequest::parse(
            br#"{"microvmId":"m","endpoints":{"logs":"http://10.0.2.100:4566"}}"#,
        )
        .unwrap();
        assert_eq!(run.logs_endpoint.as_deref(), Some("http://10.0.2.100:4566"));
        let e = RunRequest::parse(br#"{"microvmId":"m","endpoints":{"logs":"file:///x"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("endpoints.logs"), "{e}");
        assert!(RunRequest::parse(br#"{"microvmId":"m","endpoints":{"sts":"http://x"}}"#).is_err());
    }

    #[test]
    fn the_test_minimum_idle_duration_comes_in_the_envelope_and_only_lowers() {
        let run = RunRequest::parse(br#"{"microvmId":"m","testMinIdleSeconds":0}"#).unwrap();
        assert_eq!(run.test_min_idle, Some(Duration::ZERO));
        let run = RunRequest::parse(br#"{"microvmId":"m","testMinIdleSeconds":60}"#).unwrap();
        assert_eq!(run.test_min_idle, Some(Duration::from_secs(60)));
        assert_eq!(
            RunRequest::parse(br#"{"microvmId":"m"}"#)
                .unwrap()
                .test_min_idle,
            None
        );
        let e = RunRequest::parse(br#"{"microvmId":"m","testMinIdleSeconds":61}"#).unwrap_err();
        assert!(e.to_string().contains("testMinIdleSeconds"), "{e}");
        let e = RunRequest::parse(br#"{"microvmId":"m","testMinIdleSeconds":-1}"#).unwrap_err();
        assert!(e.to_string().contains("testMinIdleSeconds"), "{e}");
    }

    #[test]
    fn regions_are_dns_labels_and_nothing_else() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "eu-central-2",
            "local",
        ] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us-east-1; rm -rf /",
            "us-east-1\ncredential_process = /bin/sh",
            "US-EAST-1",
            "-us",
            "us-",
            "us east",
            "us_east_1",
            &"a".repeat(64),
        ] {
            assert!(!valid_region(bad), "{bad:?}");
        }
        let body = r#"{"microvmId":"m","region":"us-east-1; rm -rf /"}"#;
        assert!(matches!(
            RunRequest::parse(body.as_bytes()),
            Err(RequestError::Invalid(f)) if f.field == "region"
        ));
    }

    #[test]
    fn run_request_payload_limit_counts_utf8_bytes() {
        let exact = "é".repeat(MAX_RUN_HOOK_PAYLOAD / 2);
        let body = serde_json::json!({"microvmId":"m","runHookPayload":exact}).to_string();
        let run = RunRequest::parse(body.as_bytes()).expect("16384 bytes is allowed");
        assert_eq!(run.run_hook_payload, exact);
        let over = format!("{exact}x");
        let body = serde_json::json!({"microvmId":"m","runHookPayload":over}).to_string();
        assert!(matches!(
            RunRequest::parse(body.as_bytes()),
            Err(RequestError::TooLarge(f)) if f.field == "runHookPayload"
        ));
    }

    #[test]
    fn run_request_fields() {
        let err = |b: &str| match RunRequest::parse(b.as_bytes()) {
            Err(RequestError::Invalid(f)) => f.field,
            other => panic!("expected 400 for {b}: {other:?}"),
        };
        assert_eq!(err("{}"), "microvmId");
        assert_eq!(err(r#"{"microvmId":""}"#), "microvmId");
        assert_eq!(err(r#"{"microvmId":5}"#), "microvmId");
        assert_eq!(
            err(r#"{"microvmId":"m","runHookPayload":1}"#),
            "runHookPayload"
        );
        assert_eq!(err(r#"{"microvmId":"m","extra":1}"#), "extra");
        assert_eq!(err(r#"{"microvmId":"m","entropy":"!!"}"#), "entropy");
        assert_eq!(err(r#"{"microvmId":"m","entropy":"AAAA"}"#), "entropy");
        assert_eq!(
            err(r#"{"microvmId":"m","clock":{"unixTimeNanos":-1}}"#),
            "clock.unixTimeNanos"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","idlePolicy":{"maxIdleDurationSeconds":0}}"#),
            "idlePolicy.maxIdleDurationSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","maximumDurationInSeconds":0}"#),
            "maximumDurationInSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","maximumDurationInSeconds":28801}"#),
            "maximumDurationInSeconds"
        );
        assert_eq!(
            err(r#"{"microvmId":"m","credentials":{"accessKeyId":"a"}}"#),
            "credentials"
        );
        assert_eq!(err("not json"), "(body)");
        assert_eq!(err("[]"), "(body)");
    }

    #[test]
    fn run_request_full_envelope_and_app_body() {
        let entropy = "A".repeat(44); // 33 bytes
        let body = format!(
            r#"{{"microvmId":"mvm-1","runHookPayload":"p\"q\n","logging":{{"disabled":{{}}}},
            "idlePolicy":{{"maxIdleDurationSeconds":900,"suspendedDurationSeconds":300,"autoResumeEnabled":true}},
            "maximumDurationInSeconds":14400,"region":"us-east-1",
            "credentials":{{"accessKeyId":"AK","secretAccessKey":"SK","sessionToken":"T","expiration":"2026-11-21T12:00:00Z"}},
            "clock":{{"unixTimeNanos":1795000000000000000}},"entropy":"{entropy}"}}"#
        );
        let run = RunRequest::parse(body.as_bytes()).expect("valid");
        assert_eq!(run.maximum_duration, Some(Duration::from_secs(14400)));
        assert_eq!(run.fresh.entropy.as_ref().map(Vec::len), Some(33));
        assert_eq!(
            run.fresh.clock,
            Some(Clock {
                unix_time_nanos: 1_795_000_000_000_000_000
            })
        );
        let app: serde_json::Value = serde_json::from_slice(&run.app_body()).unwrap();
        assert_eq!(
            app,
            serde_json::json!({"microvmId":"mvm-1","runHookPayload":"p\"q\n"})
        );
        assert!(!format!("{:?}", run.fresh.credentials).contains("SK"));
    }

    #[test]
    fn empty_bodies() {
        assert!(parse_empty(b"").is_ok());
        assert!(parse_empty(b" {} ").is_ok());
        assert!(parse_empty(b"{\"x\":1}").is_err());
        assert_eq!(parse_resume(b"").unwrap(), Freshness::default());
        assert!(matches!(
            parse_resume(br#"{"clock":{"unixTimeNanos":5}}"#),
            Ok(Freshness {
                clock: Some(Clock { unix_time_nanos: 5 }),
                ..
            })
        ));
    }
}
