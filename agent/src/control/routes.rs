//! The host's HTTP API: routing, body limits, request parsing, answers.

use super::answer::Answer;
use super::lifecycle::{Input, Lifecycle};
use crate::config::{self, RequestError};
use crate::http::{drain, DRAIN_LIMIT};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use microvm_protocol::limits::MAX_CONTROL_BODY as MAX_BODY;
use microvm_protocol::paths::{
    CREDENTIALS as CREDENTIALS_PATH, EVENTS as EVENTS_PATH, EXEC as EXEC_PATH, FILES as FILES_PATH,
    STATUS as STATUS_PATH,
};
use microvm_protocol::{ApiError, ErrorCode, Hook, HOOK_PATH_PREFIX};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Every answer's body: whole (JSON), or a tar stream being packed.
pub type Body = Either<Full<Bytes>, super::exec::ChunkBody>;

/// A body that trickles in slower than this is abandoned (408).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Events,
    Credentials,
    Exec,
    Files,
    Hook(Hook),
    NotFound,
}

pub fn route(path: &str) -> Route {
    if path == STATUS_PATH {
        return Route::Status;
    }
    if path == EVENTS_PATH {
        return Route::Events;
    }
    if path == CREDENTIALS_PATH {
        return Route::Credentials;
    }
    if path == EXEC_PATH {
        return Route::Exec;
    }
    if path == FILES_PATH {
        return Route::Files;
    }
    match Hook::from_path(path) {
        Some(h) => Route::Hook(h),
        None => Route::NotFound,
    }
}

/// Parse a hook's body into what its operation takes.
pub fn parse_input(hook: Hook, body: &[u8]) -> Result<Input, RequestError> {
    Ok(match hook {
        Hook::Run => Input::Run(Box::new(config::RunRequest::parse(body)?)),
        Hook::Resume => Input::Resume(Box::new(config::run::parse_resume(body)?)),
        _ => {
            config::run::parse_empty(body)?;
            Input::Empty
        }
    })
}

pub(super) fn request_error(e: RequestError) -> Answer {
    let (code, f) = match e {
        RequestError::Invalid(f) => (ErrorCode::BadRequest, f),
        RequestError::TooLarge(f) => (ErrorCode::PayloadTooLarge, f),
    };
    ApiError::new(code, f.to_string())
        .with_field(f.field)
        .into()
}

fn too_large() -> Answer {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds {MAX_BODY} bytes"),
    )
    .into()
}

pub(super) fn respond(answer: Answer, allow: Option<&str>) -> Response<Body> {
    let mut body = answer.body.to_string().into_bytes();
    body.push(b'\n');
    let mut r = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = allow {
        r = r.header(header::ALLOW, a);
    }
    build(r, Either::Left(Full::new(Bytes::from(body))))
}

/// A response from `builder`, or an empty 200 should a header fail to build (the
/// headers set here are all literals or numbers: never expected).
pub(super) fn build(builder: hyper::http::response::Builder, body: Body) -> Response<Body> {
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(empty()))
}

pub(super) fn empty() -> Body {
    Either::Left(Full::new(Bytes::new()))
}

pub(super) async fn read_body(body: Incoming) -> Result<Bytes, Answer> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => {
            Err(ApiError::new(ErrorCode::BadRequest, format!("reading body: {e}")).into())
        }
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!("body not received within {}s", BODY_READ_TIMEOUT.as_secs()),
        )
        .into()),
    }
}

pub async fn handle(
    lc: Arc<Lifecycle>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = route(req.uri().path());
    match (&path, req.method()) {
        (Route::Exec, &Method::POST) => return Ok(super::exec::exec_request(&lc, req).await),
        (Route::Files, _) => return Ok(super::exec::files_request(&lc, req).await),
        _ => {}
    }
    let (parts, body) = req.into_parts();
    if path == Route::Events {
        if crate::faults::active("PANIC_ON_EVENTS") {
            panic!("test fault: panic while serving {EVENTS_PATH}");
        }
        if let Some(kind) = crate::faults::value("FATAL_ON_EVENTS") {
            crate::faults::fatal(&kind);
        }
    }
    let (answer, allow) = match (path, &parts.method) {
        (Route::Hook(hook), &Method::POST) => {
            return Ok(respond(hook_request(&lc, hook, &parts.headers, body).await, None));
        }
        (Route::Status, &Method::GET) => (Answer::ok(&lc.status()), None),
        (Route::Credentials, &Method::POST) => {
            return Ok(respond(credentials_request(&lc, body).await, None));
        }
        (Route::Credentials | Route::Exec, _) => (
            ApiError::new(ErrorCode::MethodNotAllowed, "use POST").into(),
            Some("POST"),
        ),
        (Route::Events, &Method::GET) => match crate::events::parse_query(parts.uri.query()) {
            Ok((after, wait)) => (Answer::ok(&lc.events(after, wait).await), None),
            Err(e) => (ApiError::new(ErrorCode::BadRequest, e).into(), None),
        },
        (Route::Status | Route::Events, _) => (
            ApiError::new(ErrorCode::MethodNotAllowed, "use GET").into(),
            Some("GET"),
        ),
        (Route::Hook(_), _) => (
            ApiError::new(ErrorCode::MethodNotAllowed, "use POST").into(),
            Some("POST"),
        ),
        // Served above, whatever the method.
        (Route::Files, _) => (
            ApiError::new(ErrorCode::InternalError, "files request not dispatched").into(),
            None,
        ),
        (Route::NotFound, _) => (
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no such path; use {STATUS_PATH}, {EVENTS_PATH}, {CREDENTIALS_PATH}, {EXEC_PATH}, {FILES_PATH} or {HOOK_PATH_PREFIX}{{ready,validate,run,resume,suspend,terminate}}"
                ),
            )
            .into(),
            None,
        ),
    };
    drain(body).await;
    Ok(respond(answer, allow))
}

/// New credentials from the host (the `/run` envelope's `credentials` object): the
/// metadata service and the agent's own CloudWatch client switch at once.
async fn credentials_request(lc: &Arc<Lifecycle>, body: Incoming) -> Answer {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    match config::json::from_json_objects::<microvm_protocol::run::Credentials>(&body, &[]) {
        Err(e) => request_error(RequestError::Invalid(e)),
        Ok(mut c) => match config::run::check_credentials(&mut c, "") {
            Err(e) => request_error(RequestError::Invalid(e)),
            Ok(()) => {
                let info = microvm_protocol::status::CredentialsInfo {
                    access_key_id: c.access_key_id.clone(),
                    expiration: c.expiration.clone(),
                };
                lc.set_credentials(c);
                Answer::ok(&serde_json::json!({ "credentials": info }))
            }
        },
    }
}

/// A hook request: its body within the limits, parsed, then the lifecycle.
async fn hook_request(
    lc: &Arc<Lifecycle>,
    hook: Hook,
    headers: &header::HeaderMap,
    body: Incoming,
) -> Answer {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_BODY as u64) {
        // Decided before reading; a body small enough to drain is read first so the
        // client sees the 413 instead of a reset.
        if n <= DRAIN_LIMIT as u64 {
            drain(body).await;
        }
        return too_large();
    }
    match read_body(body).await {
        Err(a) => a,
        Ok(body) => match parse_input(hook, &body) {
            Err(e) => request_error(e),
            Ok(input) => lc.request(hook, input).await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v1/status"), Route::Status);
        assert_eq!(route("/v1/events"), Route::Events);
        assert_eq!(route("/v1/credentials"), Route::Credentials);
        assert_eq!(route("/v1/exec"), Route::Exec);
        assert_eq!(route("/v1/files"), Route::Files);
        for h in Hook::ALL {
            assert_eq!(
                route(&format!("{HOOK_PATH_PREFIX}{}", h.name())),
                Route::Hook(h)
            );
        }
        for p in [
            "/",
            "/v1/status/",
            "/aws/lambda-microvms/runtime/v1/",
            "/aws/lambda-microvms/runtime/v1/Run",
            "/aws/lambda-microvms/runtime/v1/run/",
            "/aws/lambda-microvms/runtime/v2/run",
        ] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }

    #[test]
    fn bodies_per_hook() {
        assert!(matches!(parse_input(Hook::Suspend, b""), Ok(Input::Empty)));
        assert!(matches!(
            parse_input(Hook::Terminate, b"{}"),
            Ok(Input::Empty)
        ));
        assert!(matches!(
            parse_input(Hook::Suspend, b"{\"now\":true}"),
            Err(RequestError::Invalid(_))
        ));
        assert!(matches!(
            parse_input(Hook::Resume, b""),
            Ok(Input::Resume(_))
        ));
        assert!(matches!(
            parse_input(Hook::Run, b"{}"),
            Err(RequestError::Invalid(f)) if f.field == "microvmId"
        ));
        let a = request_error(RequestError::TooLarge(config::FieldError::new(
            "runHookPayload",
            "x",
        )));
        assert_eq!(a.status, 413);
        assert_eq!(a.body["field"], "runHookPayload");
    }
}
