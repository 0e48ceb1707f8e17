//! The IMDSv2 contract as a pure function: a request (method, path, the headers that
//! matter) and what the guest knows, in; status, body and headers, out. EC2's codes:
//! a token PUT without a valid TTL is 400, one carrying `X-Forwarded-For` 403; a
//! missing, unknown or expired token 401 when tokens are required (an invalid one
//! always); unknown paths 404; other methods 405.

use super::tokens::{self, Refused, Tokens};
use microvm_protocol::run::Credentials;
use microvm_protocol::status::{HttpEndpoint, HttpTokens, MetadataOptions};

/// The role name under `iam/security-credentials/`, as on the platform.
pub const ROLE_NAME: &str = "execution_role";
/// Without an expiration from the host the credentials are long-lived: the document
/// says they expire this far ahead of every read, so SDKs come back and see rotations.
pub const ROLLING_EXPIRY_S: i64 = 3600;

/// What the guest knows, from `/run` (and later rotations).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub microvm_id: Option<String>,
    pub region: Option<String>,
    pub user_data: Option<String>,
    pub credentials: Option<Credentials>,
    /// When the credentials arrived (Unix seconds).
    pub credentials_at: i64,
    pub image_name: String,
    /// When `/run` arrived (Unix seconds).
    pub run_at: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub ttl: Option<&'a str>,
    pub forwarded_for: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub json: bool,
    /// Echoed on a token answer (the Rust SDK refuses one without it).
    pub ttl: Option<u64>,
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response {
        status,
        body: body.into(),
        json: false,
        ttl: None,
    }
}

fn json(value: serde_json::Value) -> Response {
    Response {
        status: 200,
        body: value.to_string(),
        json: true,
        ttl: None,
    }
}

fn not_found() -> Response {
    text(404, "Not Found")
}

pub fn rfc3339(unix_s: i64) -> String {
    use aws_sdk_cloudwatchlogs::primitives::{DateTime, DateTimeFormat};
    DateTime::from_secs(unix_s)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

/// Answer one request. `now_ms` is monotonic (tokens), `unix_s` the wall clock
/// (documents); `random` seeds a token if one is issued.
pub fn answer(
    opts: &MetadataOptions,
    tokens: &mut Tokens,
    facts: &Facts,
    req: &Request<'_>,
    now_ms: u64,
    unix_s: i64,
    random: impl FnOnce() -> std::io::Result<[u8; 32]>,
) -> Response {
    if opts.http_endpoint == HttpEndpoint::Disabled {
        return text(403, "Forbidden: the instance metadata endpoint is disabled");
    }
    if req.path == "/latest/api/token" {
        if req.method != "PUT" {
            return text(405, "Method Not Allowed");
        }
        if req.forwarded_for {
            return text(403, "Forbidden: token requests may not be forwarded");
        }
        let ttl = match tokens::parse_ttl(req.ttl) {
            Ok(t) => t,
            Err(e) => return text(400, e),
        };
        return match random() {
            Ok(r) => Response {
                ttl: Some(ttl),
                ..text(200, tokens.issue(ttl, now_ms, r))
            },
            Err(e) => text(500, format!("no randomness for a token: {e}")),
        };
    }
    if req.method != "GET" && req.method != "HEAD" {
        return text(405, "Method Not Allowed");
    }
    match (tokens.check(req.token, now_ms), opts.http_tokens) {
        (Ok(()), _) | (Err(Refused::Missing), HttpTokens::Optional) => {}
        (Err(_), _) => return text(401, "Unauthorized"),
    }
    get(facts, req.path, unix_s)
}

fn get(f: &Facts, path: &str, unix_s: i64) -> Response {
    let ran = f.microvm_id.is_some();
    let creds = f.credentials.as_ref().filter(|_| ran);
    match path {
        "/latest" | "/latest/" => text(200, "dynamic\nmeta-data\nuser-data"),
        "/latest/meta-data" | "/latest/meta-data/" => {
            let mut entries = vec!["instance-id", "placement/"];
            if creds.is_some() {
                entries.push("iam/");
            }
            text(200, entries.join("\n"))
        }
        "/latest/meta-data/instance-id" => f
            .microvm_id
            .clone()
            .map_or_else(not_found, |id| text(200, id)),
        "/latest/meta-data/placement" | "/latest/meta-data/placement/" => text(200, "region"),
        "/latest/meta-data/placement/region" => match (&f.region, ran) {
            (Some(r), true) => text(200, r.clone()),
            _ => not_found(),
        },
        "/latest/meta-data/iam" | "/latest/meta-data/iam/" if creds.is_some() => {
            text(200, "info\nsecurity-credentials/")
        }
        "/latest/meta-data/iam/info" if creds.is_some() => json(serde_json::json!({
            "Code": "Success",
            "LastUpdated": rfc3339(f.credentials_at),
        })),
        "/latest/meta-data/iam/security-credentials"
        | "/latest/meta-data/iam/security-credentials/"
            if creds.is_some() =>
        {
            text(200, ROLE_NAME)
        }
        p if p.strip_prefix("/latest/meta-data/iam/security-credentials/") == Some(ROLE_NAME) => {
            match creds {
                Some(c) => json(serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": rfc3339(f.credentials_at),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": c.access_key_id,
                    "SecretAccessKey": c.secret_access_key,
                    "Token": c.session_token.clone().unwrap_or_default(),
                    "Expiration": c
                        .expiration
                        .clone()
                        .unwrap_or_else(|| rfc3339(unix_s + ROLLING_EXPIRY_S)),
                })),
                None => not_found(),
            }
        }
        "/latest/user-data" | "/latest/user-data/" => match (&f.user_data, ran) {
            (Some(u), true) if !u.is_empty() => text(200, u.clone()),
            _ => not_found(),
        },
        "/latest/dynamic" | "/latest/dynamic/" => text(200, "instance-identity/"),
        "/latest/dynamic/instance-identity" | "/latest/dynamic/instance-identity/" => {
            text(200, "document")
        }
        "/latest/dynamic/instance-identity/document" if ran => json(serde_json::json!({
            "instanceId": f.microvm_id,
            "region": f.region,
            "imageId": f.image_name,
            "architecture": std::env::consts::ARCH,
            "pendingTime": f.run_at.map(rfc3339),
        })),
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(tokens: HttpTokens) -> MetadataOptions {
        MetadataOptions {
            http_tokens: tokens,
            ..MetadataOptions::default()
        }
    }

    fn facts() -> Facts {
        Facts {
            microvm_id: Some("mvm-1".into()),
            region: Some("us-east-1".into()),
            user_data: Some("payload".into()),
            credentials: Some(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "SECRET".into(),
                session_token: Some("TOKEN".into()),
                expiration: Some("2026-11-22T16:00:00Z".into()),
            }),
            credentials_at: 1_795_340_000,
            image_name: "img".into(),
            run_at: Some(1_795_340_000),
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, token: Option<&'a str>) -> Request<'a> {
        Request {
            method,
            path,
            token,
            ttl: None,
            forwarded_for: false,
        }
    }

    fn put(ttl: Option<&str>, fwd: bool) -> Request<'_> {
        Request {
            ttl,
            forwarded_for: fwd,
            ..req("PUT", "/latest/api/token", None)
        }
    }

    #[test]
    fn the_token_dance_and_every_refusal() {
        let o = opts(HttpTokens::Required);
        let f = facts();
        let mut t = Tokens::default();
        let rnd = || Ok([1u8; 32]);
        assert_eq!(
            answer(&o, &mut t, &f, &put(None, false), 0, 0, rnd).status,
            400
        );
        assert_eq!(
            answer(&o, &mut t, &f, &put(Some("0"), false), 0, 0, rnd).status,
            400
        );
        assert_eq!(
            answer(&o, &mut t, &f, &put(Some("21601"), false), 0, 0, rnd).status,
            400
        );
        assert_eq!(
            answer(&o, &mut t, &f, &put(Some("60"), true), 0, 0, rnd).status,
            403
        );
        let tok = answer(&o, &mut t, &f, &put(Some("60"), false), 0, 0, rnd);
        assert_eq!((tok.status, tok.ttl), (200, Some(60)));
        let path = "/latest/meta-data/iam/security-credentials/execution_role";
        assert_eq!(
            answer(&o, &mut t, &f, &req("GET", path, None), 0, 0, rnd).status,
            401
        );
        assert_eq!(
            answer(&o, &mut t, &f, &req("GET", path, Some("x")), 0, 0, rnd).status,
            401
        );
        let doc = answer(
            &o,
            &mut t,
            &f,
            &req("GET", path, Some(&tok.body)),
            1000,
            0,
            rnd,
        );
        assert_eq!(doc.status, 200);
        let v: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
        assert_eq!(v["AccessKeyId"], "AKID");
        assert_eq!(v["Token"], "TOKEN");
        assert_eq!(v["Type"], "AWS-HMAC");
        assert_eq!(v["Code"], "Success");
        assert_eq!(v["Expiration"], "2026-11-22T16:00:00Z");
        assert_eq!(v["LastUpdated"], "2026-11-22T09:33:20Z");
        // Expired on time.
        let late = answer(
            &o,
            &mut t,
            &f,
            &req("GET", path, Some(&tok.body)),
            60_000,
            0,
            rnd,
        );
        assert_eq!(late.status, 401);
        assert_eq!(
            answer(&o, &mut t, &f, &req("POST", path, None), 0, 0, rnd).status,
            405
        );
        assert_eq!(
            answer(
                &o,
                &mut t,
                &f,
                &req("GET", "/latest/api/token", None),
                0,
                0,
                rnd
            )
            .status,
            405
        );
    }

    #[test]
    fn optional_tokens_and_a_disabled_endpoint_behave_as_on_ec2() {
        let f = facts();
        let mut t = Tokens::default();
        let rnd = || Ok([1u8; 32]);
        let o = opts(HttpTokens::Optional);
        let id = req("GET", "/latest/meta-data/instance-id", None);
        let r = answer(&o, &mut t, &f, &id, 0, 0, rnd);
        assert_eq!((r.status, r.body.as_str()), (200, "mvm-1"));
        // An invalid token is refused even when tokens are optional.
        let bad = req("GET", "/latest/meta-data/instance-id", Some("x"));
        assert_eq!(answer(&o, &mut t, &f, &bad, 0, 0, rnd).status, 401);
        let off = MetadataOptions {
            http_endpoint: HttpEndpoint::Disabled,
            ..MetadataOptions::default()
        };
        assert_eq!(answer(&off, &mut t, &f, &id, 0, 0, rnd).status, 403);
        assert_eq!(
            answer(&off, &mut t, &f, &put(Some("60"), false), 0, 0, rnd).status,
            403
        );
    }

    #[test]
    fn before_run_and_without_a_role_the_run_paths_are_404() {
        let o = opts(HttpTokens::Optional);
        let mut t = Tokens::default();
        let rnd = || Ok([1u8; 32]);
        let before = Facts {
            image_name: "img".into(),
            ..Facts::default()
        };
        for p in [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/placement/region",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/iam/security-credentials/execution_role",
            "/latest/user-data",
            "/latest/dynamic/instance-identity/document",
        ] {
            assert_eq!(
                answer(&o, &mut t, &before, &req("GET", p, None), 0, 0, rnd).status,
                404,
                "{p}"
            );
        }
        let no_role = Facts {
            credentials: None,
            user_data: Some(String::new()),
            ..facts()
        };
        for p in [
            "/latest/meta-data/iam/security-credentials/execution_role",
            "/latest/meta-data/iam/info",
            "/latest/user-data",
        ] {
            assert_eq!(
                answer(&o, &mut t, &no_role, &req("GET", p, None), 0, 0, rnd).status,
                404,
                "{p}"
            );
        }
        let listing = answer(
            &o,
            &mut t,
            &no_role,
            &req("GET", "/latest/meta-data/", None),
            0,
            0,
            rnd,
        );
        assert_eq!(listing.body, "instance-id\nplacement/");
    }

    #[test]
    fn documents_without_an_expiration_roll_forward() {
        let o = opts(HttpTokens::Optional);
        let mut t = Tokens::default();
        let mut f = facts();
        if let Some(c) = f.credentials.as_mut() {
            c.expiration = None;
            c.session_token = None;
        }
        let path = "/latest/meta-data/iam/security-credentials/execution_role";
        let r = answer(
            &o,
            &mut t,
            &f,
            &req("GET", path, None),
            0,
            1_795_340_000,
            || Ok([0; 32]),
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["Expiration"], "2026-11-22T10:33:20Z");
        assert_eq!(v["Token"], "");
        let doc = answer(
            &o,
            &mut t,
            &f,
            &req("GET", "/latest/dynamic/instance-identity/document", None),
            0,
            0,
            || Ok([0; 32]),
        );
        let v: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
        assert_eq!(v["instanceId"], "mvm-1");
        assert_eq!(v["region"], "us-east-1");
    }
}
