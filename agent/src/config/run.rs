//! The host's request bodies on the control channel (DESIGN.md contract 2), validated:
//! `/run`, `/resume`, and the hooks that take no fields.

use super::image::validate_logging;
use super::json::{from_json_objects, FieldError};
use microvm_protocol::limits::{
    MAX_DURATION_SECONDS, MAX_MICROVM_ID, MAX_RUN_HOOK_PAYLOAD, MIN_ENTROPY_BYTES, MIN_IDLE_SECONDS,
};
use microvm_protocol::run::{
    Clock, Credentials, Empty, IdlePolicy, Logging, Network, ResumeEnvelope, RunEnvelope,
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
    /// `shellIngress`: exec and files are allowed this run.
    pub shell_ingress: bool,
    /// The guest's NIC for this run (`network`), validated.
    pub network: Option<crate::sys::network::NetSettings>,
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
        let raw: RunEnvelope = from_json_objects(body, &["network.dns"])?;
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
        let mut credentials = raw.credentials;
        if let Some(c) = &mut credentials {
            check_credentials(c, "credentials.")?;
        }
        let network = raw.network.as_ref().map(network_settings).transpose()?;
        let logs_endpoint = raw.endpoints.and_then(|e| e.logs);
        if let Some(url) = &logs_endpoint {
            valid_endpoint(url).map_err(|why| FieldError::new("endpoints.logs", why))?;
        }
        Ok(RunRequest {
            network,
            logs_endpoint,
            microvm_id,
            run_hook_payload: raw.run_hook_payload,
            logging: raw.logging,
            idle_policy: raw.idle_policy,
            maximum_duration: raw.maximum_duration_in_seconds.map(Duration::from_secs),
            region: raw.region,
            test_min_idle: raw.test_min_idle_seconds.map(Duration::from_secs),
            shell_ingress: raw.shell_ingress,
            fresh: Freshness {
                clock: raw.clock,
                entropy: decode_entropy(raw.entropy)?,
                credentials,
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
    let mut raw: ResumeEnvelope = from_json_objects(body_or_empty(body), &[])?;
    if let Some(c) = &mut raw.credentials {
        check_credentials(c, "credentials.")?;
    }
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

/// The envelope's `network`, checked as the kernel parameters are; an error names the
/// envelope's field.
fn network_settings(n: &Network) -> Result<crate::sys::network::NetSettings, FieldError> {
    use crate::sys::network::NetParams;
    let params = NetParams {
        ip: Some(n.address.clone()),
        gateway: n.gateway.clone(),
        mtu: n.mtu.map(|m| m.to_string()),
        dns: (!n.dns.is_empty()).then(|| n.dns.join(",")),
        iface: n.interface.clone(),
    };
    match params.settings() {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(FieldError::new("network.address", "is required")),
        Err(e) => {
            let field = [
                ("microvm.ip", "network.address"),
                ("microvm.gateway", "network.gateway"),
                ("microvm.mtu", "network.mtu"),
                ("microvm.dns", "network.dns"),
                ("microvm.iface", "network.interface"),
            ]
            .into_iter()
            .find(|(p, _)| e.starts_with(p))
            .map_or("network", |(_, f)| f);
            Err(FieldError::new(field, e))
        }
    }
}

/// Unix seconds of an RFC 3339 UTC time (`2026-11-22T16:00:00Z`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    use aws_sdk_cloudwatchlogs::primitives::{DateTime, DateTimeFormat};
    DateTime::from_str(s, DateTimeFormat::DateTime)
        .ok()
        .map(|d| d.secs())
}

/// An RFC 3339 time with any offset (`2026-11-22T17:00:00+01:00`, what `aws configure
/// export-credentials` writes) as UTC with `Z` (`2026-11-22T16:00:00Z`), the form every
/// SDK parses from the metadata service; None if it is no RFC 3339 time.
pub fn utc_rfc3339(s: &str) -> Option<String> {
    use aws_sdk_cloudwatchlogs::primitives::{DateTime, DateTimeFormat};
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() < 20 || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (local, offset_secs) = match s.strip_suffix(['Z', 'z']) {
        Some(l) => (l, 0i64),
        None => {
            let (l, off) = s.split_at(s.len() - 6);
            let o = off.as_bytes();
            if !matches!(o[0], b'+' | b'-') || o[3] != b':' {
                return None;
            }
            let hh: i64 = off[1..3].parse().ok()?;
            let mm: i64 = off[4..6].parse().ok()?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = hh * 3600 + mm * 60;
            (l, if o[0] == b'+' { secs } else { -secs })
        }
    };
    let utc = DateTime::from_str(&format!("{local}Z"), DateTimeFormat::DateTime).ok()?;
    if offset_secs == 0 {
        return Some(format!("{local}Z"));
    }
    let shifted = DateTime::from_secs(utc.secs() - offset_secs);
    shifted.fmt(DateTimeFormat::DateTime).ok()
}

/// Credentials as the SDKs will take them from the metadata service: keys of
/// printable ASCII with no blank (they go into headers and a JSON document the SDK
/// parses), and an expiration in RFC 3339 (any offset; it is kept as UTC with `Z`,
/// the form the SDKs parse); a value they refuse would cost the application its
/// credentials silently.
pub fn check_credentials(c: &mut Credentials, prefix: &str) -> Result<(), FieldError> {
    let printable = |v: &str| v.bytes().all(|b| b.is_ascii_graphic());
    for (name, v) in [
        ("accessKeyId", Some(&c.access_key_id)),
        ("secretAccessKey", Some(&c.secret_access_key)),
        ("sessionToken", c.session_token.as_ref()),
    ] {
        let Some(v) = v else { continue };
        if v.is_empty() || v.len() > 8192 || !printable(v) {
            return Err(FieldError::new(
                format!("{prefix}{name}"),
                "must be 1-8192 printable ASCII characters with no blank",
            ));
        }
    }
    if let Some(e) = &c.expiration {
        match utc_rfc3339(e) {
            Some(utc) => c.expiration = Some(utc),
            None => {
                return Err(FieldError::new(
                    format!("{prefix}expiration"),
                    format!("must be an RFC 3339 time such as 2026-11-22T16:00:00Z, got {e:?}"),
                ))
            }
        }
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
    fn the_network_comes_in_the_envelope_checked_as_the_kernel_parameters_are() {
        let run =
            |n: &str| RunRequest::parse(format!(r#"{{"microvmId":"m","network":{n}}}"#).as_bytes());
        let ok = run(r#"{"address":"10.9.0.2/24","gateway":"10.9.0.1","mtu":1400,"dns":["10.9.0.53"],"interface":"eth0"}"#)
            .unwrap()
            .network
            .unwrap();
        assert_eq!(ok.address, std::net::Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(ok.prefix, 24);
        assert_eq!(ok.gateway, Some(std::net::Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(ok.mtu, Some(1400));
        assert_eq!(ok.interface.as_deref(), Some("eth0"));
        assert_eq!(
            RunRequest::parse(br#"{"microvmId":"m"}"#).unwrap().network,
            None
        );
        for (bad, field) in [
            (r#"{"address":"10.9.0.2"}"#, "network.address"),
            (
                r#"{"address":"10.9.0.2/24","gateway":"10.8.0.1"}"#,
                "network.gateway",
            ),
            (r#"{"address":"10.9.0.2/24","mtu":20}"#, "network.mtu"),
            (r#"{"address":"10.9.0.2/24","dns":["x"]}"#, "network.dns"),
            (
                r#"{"address":"10.9.0.2/24","interface":"../x"}"#,
                "network.interface",
            ),
            (r#"{"address":"10.9.0.2/24","ip":"x"}"#, "network.ip"),
            // serde names the object, and its message the missing field.
            (r#"{"gateway":"10.9.0.1"}"#, "network"),
        ] {
            match run(bad) {
                Err(RequestError::Invalid(e)) => assert_eq!(e.field, field, "{bad}: {e}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn credentials_the_sdks_would_refuse_are_refused_naming_the_field() {
        let ok = Credentials {
            access_key_id: "ASIAXYZ".into(),
            secret_access_key: "s/e+c=".into(),
            session_token: Some("T0k/en=".into()),
            expiration: Some("2026-11-22T16:00:00Z".into()),
        };
        assert_eq!(check_credentials(&mut ok.clone(), "credentials."), Ok(()));
        let field =
            |mut c: Credentials| check_credentials(&mut c, "credentials.").unwrap_err().field;
        // Offsets are taken (aws configure export-credentials writes +00:00), kept as UTC.
        for (given, kept) in [
            ("2026-11-22T17:00:00+01:00", "2026-11-22T16:00:00Z"),
            ("2026-11-22T16:00:00+00:00", "2026-11-22T16:00:00Z"),
            ("2026-11-22T14:30:00-01:30", "2026-11-22T16:00:00Z"),
            ("2026-11-22T16:00:00.5Z", "2026-11-22T16:00:00.5Z"),
        ] {
            let mut c = Credentials {
                expiration: Some(given.into()),
                ..ok.clone()
            };
            assert_eq!(check_credentials(&mut c, ""), Ok(()), "{given}");
            assert_eq!(c.expiration.as_deref(), Some(kept), "{given}");
        }
        for bad in [
            "2026-11-22T16:00:00+1:00",
            "2026-11-22T16:00:00+24:00",
            "2026-11-22 16:00:00Z",
            "soon",
            "2026-13-01T00:00:00Z",
            "",
        ] {
            let c = Credentials {
                expiration: Some(bad.into()),
                ..ok.clone()
            };
            assert_eq!(field(c), "credentials.expiration", "{bad}");
        }
        let c = Credentials {
            access_key_id: "".into(),
            ..ok.clone()
        };
        assert_eq!(field(c), "credentials.accessKeyId");
        let c = Credentials {
            secret_access_key: "a b".into(),
            ..ok.clone()
        };
        assert_eq!(field(c), "credentials.secretAccessKey");
        let c = Credentials {
            session_token: Some("x\ncredential_process=/bin/sh".into()),
            ..ok.clone()
        };
        assert_eq!(field(c), "credentials.sessionToken");
        let body =
            br#"{"credentials":{"accessKeyId":"a","secretAccessKey":"s","expiration":"tomorrow"}}"#;
        match parse_resume(body) {
            Err(RequestError::Invalid(e)) => assert_eq!(e.field, "credentials.expiration"),
            other => panic!("{other:?}"),
        }
    }

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
