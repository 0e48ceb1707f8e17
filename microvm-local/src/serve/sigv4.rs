//! Signature Version 4, checked as the service checks it: the canonical request
//! rebuilt from what arrived, the string to sign, the key derived from the configured
//! secret, and the signature compared. The request's clock must be within 15 minutes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The keys requests must be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The region a request's credential scope must name (the server's).
    pub region: String,
    /// The signing names a scope may name (`lambda`, `logs`).
    pub services: &'static [&'static str],
}

/// What arrived, as the check needs it.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// Why a request was refused: (error type, message), answered with 403.
pub type Refusal = (&'static str, String);

const SKEW_MS: i64 = 15 * 60 * 1000;

pub fn check(req: &Signed<'_>, keys: &Keys, now_ms: i64) -> Result<(), Refusal> {
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let auth = header("authorization").ok_or((
        "MissingAuthenticationTokenException",
        "Missing Authentication Token".to_string(),
    ))?;
    let malformed = || {
        (
            "IncompleteSignatureException",
            format!(
                "Authorization header requires Credential, SignedHeaders and Signature: {auth}"
            ),
        )
    };
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(malformed)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (credential, signed, signature) = match (credential, signed, signature) {
        (Some(c), Some(s), Some(g)) => (c, s, g),
        _ => return Err(malformed()),
    };
    let scope: Vec<&str> = credential.splitn(5, '/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(malformed());
    }
    if scope[0] != keys.access_key_id {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    }
    let amz_date = header("x-amz-date").ok_or((
        "IncompleteSignatureException",
        "Authorization requires the X-Amz-Date header".to_string(),
    ))?;
    let when = parse_amz_date(amz_date).ok_or_else(malformed)?;
    if (when - now_ms).abs() > SKEW_MS {
        return Err((
            "InvalidSignatureException",
            format!("Signature expired: {amz_date} is more than 15 minutes from the server's time"),
        ));
    }
    if !amz_date.starts_with(scope[1]) {
        return Err(malformed());
    }
    // A client configured for another region or service is told, not answered with
    // ARNs of this one.
    if scope[2] != keys.region {
        return Err((
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region, not '{}'; this endpoint is '{}'",
                scope[2], keys.region
            ),
        ));
    }
    if !keys.services.contains(&scope[3]) {
        return Err((
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: one of {:?}, not '{}'",
                keys.services, scope[3]
            ),
        ));
    }
    if !signed.split(';').any(|h| h == "host") {
        return Err((
            "InvalidSignatureException",
            "SignedHeaders must include host".into(),
        ));
    }
    // The body is hashed here, always: a client's claim of its hash is only checked.
    let payload = hex(&Sha256::digest(req.body));
    if header("x-amz-content-sha256").is_some_and(|h| h != payload) {
        return Err((
            "InvalidSignatureException",
            "X-Amz-Content-Sha256 does not match the body's SHA-256".into(),
        ));
    }
    let canonical = canonical_request(req, signed, &payload).ok_or_else(malformed)?;
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        scope[1..5].join("/"),
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{}", keys.secret_access_key).into_bytes();
    for part in &scope[1..5] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex(&hmac(&key, to_sign.as_bytes()));
    // Both are hex of one length: compare every byte, whatever differs first.
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0;
    if !same {
        return Err((
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
        ));
    }
    Ok(())
}

fn canonical_request(req: &Signed<'_>, signed: &str, payload: &str) -> Option<String> {
    let mut headers = String::new();
    for name in signed.split(';') {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return None;
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Some(format!(
        "{}\n{}\n{}\n{headers}\n{signed}\n{payload}",
        req.method,
        encode(req.path, false),
        canonical_query(req.query)?
    ))
}

/// Pairs decoded, encoded again the canonical way, sorted by name then value.
fn canonical_query(q: Option<&str>) -> Option<String> {
    let mut pairs = Vec::new();
    for p in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let k = super::wire::percent_decode(k)?;
        let v = super::wire::percent_decode(v)?;
        pairs.push((encode(&k, true), encode(&v, true)));
    }
    pairs.sort();
    Some(
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// SigV4's URI encoding: unreserved characters stay, `/` too in a path; a path is
/// encoded as sent (so its `%` become `%25`: services other than S3 double-encode).
fn encode(s: &str, slash_too: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !slash_too);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => Vec::new(),
    }
}

fn hex(b: &[u8]) -> String {
    crate::host::hex(b)
}

/// `20260102T030405Z` as Unix milliseconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, sec) = (n(9..11)?, n(11..13)?, n(13..15)?);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let t = date
        .with_hms(
            u8::try_from(h).ok()?,
            u8::try_from(mi).ok()?,
            u8::try_from(sec).ok()?,
        )
        .ok()?
        .assume_utc();
    Some(t.unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AWS SigV4 test suite's "get-vanilla-query-order-key-case" case
    // (credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
    // 20150830T123600Z, us-east-1, service "service").
    fn vanilla() -> (Keys, Vec<(String, String)>) {
        let keys = Keys {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            services: &["service"],
        };
        let headers = vec![
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
            ("authorization".to_string(), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500".to_string()),
        ];
        (keys, headers)
    }

    fn at() -> i64 {
        parse_amz_date("20150830T123600Z").unwrap()
    }

    #[test]
    fn the_aws_suites_vanilla_query_case_verifies() {
        let (keys, headers) = vanilla();
        let req = Signed {
            method: "GET",
            path: "/",
            query: Some("Param2=value2&Param1=value1"),
            headers,
            body: b"",
        };
        assert_eq!(check(&req, &keys, at()), Ok(()));
        // One byte of the query changed: refused.
        let req = Signed {
            query: Some("Param2=value3&Param1=value1"),
            ..req
        };
        assert_eq!(
            check(&req, &keys, at()).unwrap_err().0,
            "InvalidSignatureException"
        );
    }

    /// A POST with a body and a percent-encoded path (an ARN in it) and query, signed
    /// by botocore 1.42's SigV4Auth (awscli 1.46.3's) for `lambda` in eu-west-1.
    fn botocore_post() -> (Keys, Vec<(String, String)>) {
        let keys = Keys {
            access_key_id: "AKIDLOCALTEST".into(),
            secret_access_key: "local/secret+key".into(),
            region: "eu-west-1".into(),
            services: &["lambda", "logs"],
        };
        let headers = vec![
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("host".to_string(), "127.0.0.1:9090".to_string()),
            ("x-amz-date".to_string(), "20261205T171557Z".to_string()),
            ("authorization".to_string(), "AWS4-HMAC-SHA256 Credential=AKIDLOCALTEST/20261205/eu-west-1/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=cd74f1e86b6b2d07b5aba56964a45228adc29d8e2a87c371ecd4e98e887ede5e".to_string()),
        ];
        (keys, headers)
    }

    const POST_PATH: &str = "/2025-09-09/microvm-images/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Amicrovm-image%3Aexample/versions";
    const POST_BODY: &[u8] = br#"{"runHookPayload":"h\u00e9llo","imageIdentifier":"example"}"#;

    #[test]
    fn botocores_post_with_body_and_encoded_path_verifies_and_its_body_is_bound() {
        let (keys, headers) = botocore_post();
        let at = parse_amz_date("20261205T171557Z").unwrap();
        let req = |h: Vec<(String, String)>, body: &'static [u8]| Signed {
            method: "POST",
            path: POST_PATH,
            query: Some("maxResults=2&nextToken=a%2Fb"),
            headers: h,
            body,
        };
        assert_eq!(check(&req(headers.clone(), POST_BODY), &keys, at), Ok(()));
        // Another body under the same signature, with or without a claimed hash of
        // the original: refused.
        let other: &[u8] = br#"{"runHookPayload":"other","imageIdentifier":"example"}"#;
        assert_eq!(
            check(&req(headers.clone(), other), &keys, at)
                .unwrap_err()
                .0,
            "InvalidSignatureException"
        );
        let mut claimed = headers.clone();
        claimed.push((
            "x-amz-content-sha256".into(),
            hex(&Sha256::digest(POST_BODY)),
        ));
        assert_eq!(check(&req(claimed.clone(), POST_BODY), &keys, at), Ok(()));
        assert_eq!(
            check(&req(claimed, other), &keys, at).unwrap_err(),
            (
                "InvalidSignatureException",
                "X-Amz-Content-Sha256 does not match the body's SHA-256".into()
            )
        );
        // A client set to another region, or the scope of another service.
        let here = Keys {
            region: "us-east-1".into(),
            ..keys.clone()
        };
        let e = check(&req(headers.clone(), POST_BODY), &here, at).unwrap_err();
        assert!(e.1.contains("not 'eu-west-1'"), "{e:?}");
        let logs_only = Keys {
            services: &["logs"],
            ..keys.clone()
        };
        let e = check(&req(headers, POST_BODY), &logs_only, at).unwrap_err();
        assert!(e.1.contains("not 'lambda'"), "{e:?}");
    }

    #[test]
    fn wrong_keys_stale_clocks_and_missing_parts_are_refused() {
        let (keys, headers) = vanilla();
        let req = |h: Vec<(String, String)>| Signed {
            method: "GET",
            path: "/",
            query: Some("Param2=value2&Param1=value1"),
            headers: h,
            body: b"",
        };
        let other = Keys {
            access_key_id: "AKIDOTHER".into(),
            ..keys.clone()
        };
        assert_eq!(
            check(&req(headers.clone()), &other, at()).unwrap_err().0,
            "UnrecognizedClientException"
        );
        let secret = Keys {
            secret_access_key: "x".into(),
            ..keys.clone()
        };
        assert_eq!(
            check(&req(headers.clone()), &secret, at()).unwrap_err().0,
            "InvalidSignatureException"
        );
        assert_eq!(
            check(&req(headers.clone()), &keys, at() + 16 * 60 * 1000)
                .unwrap_err()
                .0,
            "InvalidSignatureException"
        );
        let none: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k != "authorization")
            .cloned()
            .collect();
        assert_eq!(
            check(&req(none), &keys, at()).unwrap_err().0,
            "MissingAuthenticationTokenException"
        );
        let no_date: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k != "x-amz-date")
            .cloned()
            .collect();
        assert_eq!(
            check(&req(no_date), &keys, at()).unwrap_err().0,
            "IncompleteSignatureException"
        );
    }

    #[test]
    fn encoding_is_sigv4s() {
        assert_eq!(
            encode("/2025-09-09/microvms/mvm-1", false),
            "/2025-09-09/microvms/mvm-1"
        );
        assert_eq!(encode("a b/c~", true), "a%20b%2Fc~");
        assert_eq!(encode("/a%2Fb", false), "/a%252Fb");
        assert_eq!(
            canonical_query(Some("b=2&a=%3A1&a=0")).unwrap(),
            "a=%3A1&a=0&b=2"
        );
    }
}
