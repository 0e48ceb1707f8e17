//! The rest-json wire form the SDKs parse: answers, errors (`x-amzn-ErrorType` plus a
//! JSON `message`), query strings, and the timestamps of the model (epoch seconds).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Response;
use serde_json::{json, Value};

/// An operation's answer: its status and body, or the service's error.
pub type Outcome = Result<(u16, Value), ApiError>;

/// An error of the model: its shape name is the `x-amzn-ErrorType`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    /// Members besides `message` (`resourceId`, `resourceType`).
    pub extra: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "ValidationException", message)
    }

    pub fn conflict(id: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, "ConflictException", message)
            .with("resourceId", id)
            .with("resourceType", "Microvm")
    }

    pub fn not_found(kind: &'static str, id: &str) -> ApiError {
        let what = match kind {
            "MicrovmImage" => "MicroVM image",
            "MicrovmImageVersion" => "MicroVM image version",
            "MicrovmImageBuild" => "MicroVM image build",
            "ManagedMicrovmImage" => "managed MicroVM image",
            "ManagedMicrovmImageVersion" => "managed MicroVM image version",
            _ => "MicroVM",
        };
        ApiError::new(
            404,
            "ResourceNotFoundException",
            format!("{what} {id} not found"),
        )
        .with("resourceId", id)
        .with("resourceType", kind)
    }

    /// A ConflictException over an image (ARN).
    pub fn image_conflict(arn: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, "ConflictException", message)
            .with("resourceId", arn)
            .with("resourceType", "MicrovmImage")
    }

    pub fn with_message(mut self, message: impl Into<String>) -> ApiError {
        self.message = message.into();
        self
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalServerException", message)
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    pub fn with(mut self, k: &'static str, v: &str) -> ApiError {
        self.extra.push((k, v.to_string()));
        self
    }

    pub fn body(&self) -> Value {
        let mut v = json!({"message": self.message});
        for (k, x) in &self.extra {
            v[*k] = json!(x);
        }
        v
    }
}

pub type Answer = Response<Full<Bytes>>;

/// A JSON answer with the operation's status code.
pub fn ok(status: u16, body: &Value) -> Answer {
    respond(
        status,
        "application/json",
        body.to_string().into_bytes(),
        None,
    )
}

pub fn error(e: &ApiError) -> Answer {
    respond(
        e.status,
        "application/json",
        e.body().to_string().into_bytes(),
        Some(e.kind),
    )
}

pub fn respond(status: u16, content_type: &str, body: Vec<u8>, kind: Option<&str>) -> Answer {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header(
            "x-amzn-requestid",
            crate::host::hex(&crate::host::random(16)),
        );
    if let Some(k) = kind {
        b = b.header("x-amzn-errortype", k);
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Seconds since the epoch, as the model's timestamps travel in rest-json bodies.
pub fn epoch_seconds(unix_ms: u64) -> Value {
    json!(unix_ms as f64 / 1000.0)
}

pub fn now_ms() -> u64 {
    crate::host::now_nanos() / 1_000_000
}

/// `%XX` decoded (a `+` stays a `+`: the SDKs encode spaces as `%20`).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query string's pairs, decoded, in order.
pub fn query_pairs(q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => {
                return Err(ApiError::validation(format!(
                    "malformed query string: {pair}"
                )))
            }
        }
    }
    Ok(out)
}

/// A `maxResults` of the query: an integer within the operation's bounds.
pub fn max_results(pairs: &[(String, String)], max: usize) -> Result<usize, ApiError> {
    match pairs.iter().find(|(k, _)| k == "maxResults") {
        None => Ok(max),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(format!(
                "1 validation error detected: Value '{v}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {max}"
            ))),
        },
    }
}

pub fn query<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One page of `items` in the order of `key`, and the token of the next. The token
/// names the key of the next item; the page it asks for starts there, or at the
/// first item after it when that one has gone meanwhile (a TERMINATED MicroVM past
/// its retention), so a walk never breaks and never repeats an item.
pub fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    max: usize,
    next_token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    items.sort_by_key(|i| key(i));
    let start = match next_token {
        None => 0,
        Some(t) => {
            let k = unhex(t).ok_or_else(|| ApiError::validation("Invalid nextToken"))?;
            items
                .iter()
                .position(|i| key(i) >= k)
                .unwrap_or(items.len())
        }
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = rest.get(max).map(|i| crate::host::hex(key(i).as_bytes()));
    rest.truncate(max);
    Ok((rest, next))
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_every_item_once_and_refuse_a_forged_token() {
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let (p1, t1) = page(items.clone(), |s| s.clone(), 1, None).unwrap();
        assert_eq!(p1, ["a"]);
        let (p2, t2) = page(items.clone(), |s| s.clone(), 1, t1.as_deref()).unwrap();
        assert_eq!(p2, ["b"]);
        let (p3, t3) = page(items.clone(), |s| s.clone(), 1, t2.as_deref()).unwrap();
        assert_eq!((p3, t3), (vec!["c".to_string()], None));
        let (all, none) = page(items.clone(), |s| s.clone(), 50, None).unwrap();
        assert_eq!((all.len(), none), (3, None));
        for bad in ["zz", "6"] {
            let e = page(items.clone(), |s| s.clone(), 1, Some(bad)).unwrap_err();
            assert_eq!((e.status, e.kind), (400, "ValidationException"), "{bad}");
        }
        // The next item went away between pages: the walk goes on after it.
        let fewer: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let (p2, t) = page(fewer.clone(), |s| s.clone(), 1, t1.as_deref()).unwrap();
        assert_eq!((p2, t), (vec!["c".to_string()], None));
        let (p, t) = page(fewer, |s| s.clone(), 1, Some(&crate::host::hex(b"z"))).unwrap();
        assert_eq!((p.len(), t), (0, None));
    }

    #[test]
    fn queries_decode_and_bound_max_results() {
        let p = query_pairs(Some("maxResults=1&imageIdentifier=arn%3Aaws%3Ax&e=")).unwrap();
        assert_eq!(query(&p, "imageIdentifier"), Some("arn:aws:x"));
        assert_eq!(query(&p, "e"), Some(""));
        assert_eq!(max_results(&p, 50), Ok(1));
        for bad in ["0", "51", "x", "-1"] {
            let p = vec![("maxResults".to_string(), bad.to_string())];
            assert_eq!(max_results(&p, 50).unwrap_err().kind, "ValidationException");
        }
        assert!(query_pairs(Some("a=%zz")).is_err());
        assert!(query_pairs(Some("a=%e2%82")).is_err());
    }

    #[test]
    fn errors_carry_the_type_header_and_message() {
        let e = ApiError::not_found("Microvm", "mvm-1");
        let r = error(&e);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");
        assert_eq!(
            e.body(),
            json!({"message": "MicroVM mvm-1 not found", "resourceId": "mvm-1", "resourceType": "Microvm"})
        );
    }
}
