//! The server's MicroVMs: their records, the lifecycle's rules (which operation is
//! allowed in which state), client tokens, and ingress auth tokens. Pure: the
//! runners and the HTTP sides live elsewhere.

use super::wire::{epoch_seconds, ApiError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The model's states: the contract's enum, which the agent's status already uses.
pub use microvm_protocol::status::State;

/// An operation on a MicroVM that its state may forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Suspend,
    Resume,
    Terminate,
}

/// What an operation does from a state: the state while it is carried out, `None`
/// when there is nothing to do (terminating what is already going), or a conflict.
pub fn begin(state: State, op: Op) -> Result<Option<State>, String> {
    use State::*;
    match (op, state) {
        (Op::Suspend, Running) => Ok(Some(Suspending)),
        (Op::Resume, Suspended) => Ok(Some(Suspended)),
        (Op::Terminate, Terminating | Terminated) => Ok(None),
        (Op::Terminate, _) => Ok(Some(Terminating)),
        (Op::Suspend, s) => Err(format!(
            "only a RUNNING MicroVM can be suspended; this one is {}",
            s.as_str()
        )),
        (Op::Resume, s) => Err(format!(
            "only a SUSPENDED MicroVM can be resumed; this one is {}",
            s.as_str()
        )),
    }
}

/// Ports an ingress token opens (the model's `PortSpecification` union, merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    Ranges(Vec<(u16, u16)>),
}

impl Ports {
    pub fn allows(&self, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Ranges(r) => r.iter().any(|(a, b)| (*a..=*b).contains(&port)),
        }
    }

    /// `allowedPorts` as the model has it: at least one union, each exactly one of
    /// `port`, `range {startPort, endPort}`, `allPorts {}`.
    pub fn parse(v: Option<&Value>) -> Result<Ports, ApiError> {
        let bad = |m: String| ApiError::validation(m);
        let list = v.and_then(Value::as_array).ok_or_else(|| {
            bad("allowedPorts is required: a list of port, range or allPorts".into())
        })?;
        if list.is_empty() {
            return Err(bad("1 validation error detected: Value at 'allowedPorts' failed to satisfy constraint: Member must have length greater than or equal to 1".into()));
        }
        let port = |v: &Value, name: &str| -> Result<u16, ApiError> {
            v.as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| bad(format!("1 validation error detected: Value '{v}' at '{name}' failed to satisfy constraint: Member must have value between 1 and 65535")))
        };
        let mut ranges = Vec::new();
        for (i, spec) in list.iter().enumerate() {
            let m = spec.as_object().filter(|m| m.len() == 1).ok_or_else(|| {
                bad(format!(
                    "allowedPorts[{i}] must set exactly one of port, range, allPorts"
                ))
            })?;
            if let Some(p) = m.get("port") {
                let p = port(p, &format!("allowedPorts.{}.member.port", i + 1))?;
                ranges.push((p, p));
            } else if let Some(r) = m.get("range") {
                let a = port(
                    &r["startPort"],
                    &format!("allowedPorts.{}.member.range.startPort", i + 1),
                )?;
                let b = port(
                    &r["endPort"],
                    &format!("allowedPorts.{}.member.range.endPort", i + 1),
                )?;
                if a > b {
                    return Err(bad(format!(
                        "allowedPorts[{i}].range: startPort {a} is above endPort {b}"
                    )));
                }
                ranges.push((a, b));
            } else if m.contains_key("allPorts") {
                return Ok(Ports::All);
            } else {
                return Err(bad(format!(
                    "allowedPorts[{i}] must set exactly one of port, range, allPorts"
                )));
            }
        }
        Ok(Ports::Ranges(ranges))
    }
}

/// Longest life of an auth token, in minutes (the platform's documented 60).
pub const MAX_TOKEN_MINUTES: u64 = 60;

/// `expirationInMinutes`: 1 to 60.
pub fn token_minutes(v: Option<&Value>) -> Result<u64, ApiError> {
    match v.and_then(Value::as_u64) {
        Some(n) if (1..=MAX_TOKEN_MINUTES).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'expirationInMinutes' failed to satisfy constraint: Member must have value between 1 and {MAX_TOKEN_MINUTES}",
            v.cloned().unwrap_or(Value::Null)
        ))),
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub expires_ms: u64,
    pub ports: Ports,
    /// A shell token opens the terminal, not the application's ports.
    pub shell: bool,
}

/// Why a proxied request is refused (status, message).
pub fn authorize(
    tokens: &[Token],
    presented: Option<&str>,
    port: u16,
    shell: bool,
    now_ms: u64,
) -> Result<(), (u16, String)> {
    let Some(p) = presented else {
        return Err((401, "missing X-aws-proxy-auth (or the lambda-microvms.authentication.<token> subprotocol): create one with CreateMicrovmAuthToken".into()));
    };
    let Some(t) = tokens.iter().find(|t| t.value == p && t.shell == shell) else {
        return Err((403, "the auth token is not valid for this MicroVM".into()));
    };
    if now_ms >= t.expires_ms {
        return Err((403, "the auth token has expired".into()));
    }
    if !shell && !t.ports.allows(port) {
        return Err((403, format!("the auth token does not allow port {port}")));
    }
    Ok(())
}

pub struct Record {
    pub id: String,
    pub image_arn: String,
    pub image_version: String,
    /// The parameters as given (echoed in the answers).
    pub request: Map<String, Value>,
    pub state: State,
    pub state_reason: Option<String>,
    pub started_ms: u64,
    pub terminated_ms: Option<u64>,
    /// When it became TERMINATED: it is forgotten a while later.
    pub gone: Option<Instant>,
    pub endpoint: String,
    pub maximum_duration_s: u64,
    pub tokens: Vec<Token>,
    pub shell: bool,
    pub auto_resume: bool,
    /// A ResumeMicrovm under way (the state stays SUSPENDED meanwhile: the model has
    /// no RESUMING): another one joins it instead of resuming twice, and is answered
    /// what it is answered, through this.
    pub resuming: Option<tokio::sync::watch::Receiver<Option<super::wire::Outcome>>>,
    /// Order of creation, for listing.
    pub seq: u64,
}

/// A MicroVM runs at most this long unless `maximumDurationInSeconds` says less
/// (the model's maximum; the service's default is not published).
pub const DEFAULT_MAXIMUM_DURATION_S: u64 = 28_800;

impl Record {
    /// RunMicrovmResponse / GetMicrovmResponse.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "microvmId": self.id,
            "state": self.state.as_str(),
            "endpoint": self.endpoint,
            "imageArn": self.image_arn,
            "imageVersion": self.image_version,
            "maximumDurationInSeconds": self.maximum_duration_s,
            "startedAt": epoch_seconds(self.started_ms),
        });
        for k in [
            "executionRoleArn",
            "idlePolicy",
            "kmsKeyIdentifier",
            "ingressNetworkConnectors",
            "egressNetworkConnectors",
        ] {
            if let Some(x) = self.request.get(k) {
                v[k] = x.clone();
            }
        }
        if let Some(t) = self.terminated_ms {
            v["terminatedAt"] = epoch_seconds(t);
        }
        if let Some(r) = &self.state_reason {
            v["stateReason"] = json!(r);
        }
        v
    }

    /// MicrovmItem of ListMicrovms.
    pub fn item(&self) -> Value {
        json!({
            "microvmId": self.id,
            "state": self.state.as_str(),
            "imageArn": self.image_arn,
            "imageVersion": self.image_version,
            "startedAt": epoch_seconds(self.started_ms),
        })
    }

    /// Now TERMINATED, with the first reason given (a later one does not replace it).
    pub fn terminated(&mut self, reason: &str, now_ms: u64) {
        if self.state == State::Terminated {
            return;
        }
        self.state = State::Terminated;
        self.state_reason.get_or_insert_with(|| reason.to_string());
        self.terminated_ms = Some(now_ms);
        self.gone = Some(Instant::now());
        self.tokens.clear();
    }
}

#[derive(Default)]
pub struct Registry {
    pub records: HashMap<String, Record>,
    /// clientToken -> (MicroVM id, the parameters it came with).
    pub client_tokens: HashMap<String, (String, Map<String, Value>)>,
    next_seq: u64,
}

/// What a RunMicrovm's clientToken means.
#[derive(Debug, PartialEq)]
pub enum Repeat {
    New,
    Same(String),
}

impl Registry {
    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A token used before with the same parameters names the MicroVM it made; with
    /// other parameters it is a conflict (as the service's idempotency works).
    pub fn repeat(
        &self,
        token: Option<&str>,
        request: &Map<String, Value>,
    ) -> Result<Repeat, ApiError> {
        let Some(t) = token else {
            return Ok(Repeat::New);
        };
        match self.client_tokens.get(t) {
            None => Ok(Repeat::New),
            Some((id, r)) if r == request => Ok(Repeat::Same(id.clone())),
            Some((id, _)) => Err(ApiError::conflict(
                id,
                format!("clientToken {t} was used with other parameters (MicroVM {id})"),
            )),
        }
    }

    /// Forget MicroVMs terminated longer ago than `keep` (and their client tokens).
    pub fn expire(&mut self, keep: Duration) -> Vec<String> {
        let old: Vec<String> = self
            .records
            .values()
            .filter(|r| r.gone.is_some_and(|g| g.elapsed() >= keep))
            .map(|r| r.id.clone())
            .collect();
        for id in &old {
            self.records.remove(id);
        }
        self.client_tokens.retain(|_, (id, _)| !old.contains(id));
        old
    }

    pub fn get(&self, id: &str) -> Result<&Record, ApiError> {
        self.records
            .get(id)
            .ok_or_else(|| ApiError::not_found("Microvm", id))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Record, ApiError> {
        self.records
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("Microvm", id))
    }

    /// In creation order, filtered by image (name or ARN resolved by the caller) and
    /// version.
    pub fn list(&self, image_arn: Option<&str>, version: Option<&str>) -> Vec<&Record> {
        let mut v: Vec<&Record> = self
            .records
            .values()
            .filter(|r| image_arn.is_none_or(|a| r.image_arn == a))
            .filter(|r| version.is_none_or(|x| r.image_version == x))
            .collect();
        v.sort_by_key(|r| r.seq);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_allows_what_the_state_allows() {
        use State::*;
        assert_eq!(begin(Running, Op::Suspend), Ok(Some(Suspending)));
        for s in [Pending, Suspending, Suspended, Terminating, Terminated] {
            assert!(begin(s, Op::Suspend).is_err(), "{s:?}");
        }
        assert_eq!(begin(Suspended, Op::Resume), Ok(Some(Suspended)));
        for s in [Pending, Running, Suspending, Terminating, Terminated] {
            assert!(begin(s, Op::Resume).is_err(), "{s:?}");
        }
        for s in [Pending, Running, Suspending, Suspended] {
            assert_eq!(begin(s, Op::Terminate), Ok(Some(Terminating)));
        }
        assert_eq!(begin(Terminated, Op::Terminate), Ok(None));
        assert_eq!(
            begin(Suspended, Op::Suspend).unwrap_err(),
            "only a RUNNING MicroVM can be suspended; this one is SUSPENDED"
        );
    }

    #[test]
    fn allowed_ports_follow_the_union() {
        let p = Ports::parse(Some(
            &json!([{"port": 8080}, {"range": {"startPort": 9000, "endPort": 9002}}]),
        ))
        .unwrap();
        assert!(p.allows(8080) && p.allows(9000) && p.allows(9002));
        assert!(!p.allows(8081) && !p.allows(9003));
        assert_eq!(
            Ports::parse(Some(&json!([{"allPorts": {}}]))).unwrap(),
            Ports::All
        );
        for bad in [
            json!([]),
            json!([{"port": 0}]),
            json!([{"port": 65536}]),
            json!([{"range": {"startPort": 10, "endPort": 9}}]),
            json!([{"port": 1, "allPorts": {}}]),
            json!([{}]),
            json!("8080"),
        ] {
            let e = Ports::parse(Some(&bad)).unwrap_err();
            assert_eq!(e.kind, "ValidationException", "{bad}");
        }
        assert!(Ports::parse(None).is_err());
        assert_eq!(token_minutes(Some(&json!(60))), Ok(60));
        for bad in [json!(0), json!(61), json!("5"), Value::Null] {
            assert!(token_minutes(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_open_their_ports_until_they_expire() {
        let t = vec![Token {
            value: "tok".into(),
            expires_ms: 1000,
            ports: Ports::Ranges(vec![(8080, 8080)]),
            shell: false,
        }];
        assert_eq!(authorize(&t, Some("tok"), 8080, false, 999), Ok(()));
        assert_eq!(authorize(&t, None, 8080, false, 0).unwrap_err().0, 401);
        assert_eq!(
            authorize(&t, Some("other"), 8080, false, 0).unwrap_err().0,
            403
        );
        assert_eq!(
            authorize(&t, Some("tok"), 8081, false, 0).unwrap_err().1,
            "the auth token does not allow port 8081"
        );
        assert_eq!(
            authorize(&t, Some("tok"), 8080, false, 1000).unwrap_err().1,
            "the auth token has expired"
        );
        // An ingress token does not open the shell, nor a shell token the ports.
        assert_eq!(authorize(&t, Some("tok"), 0, true, 0).unwrap_err().0, 403);
    }

    #[test]
    fn client_tokens_repeat_or_conflict() {
        let mut r = Registry::default();
        let req = json!({"imageIdentifier": "a", "clientToken": "t"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(r.repeat(Some("t"), &req), Ok(Repeat::New));
        r.client_tokens
            .insert("t".into(), ("mvm-1".into(), req.clone()));
        assert_eq!(r.repeat(Some("t"), &req), Ok(Repeat::Same("mvm-1".into())));
        let other = json!({"imageIdentifier": "b", "clientToken": "t"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            r.repeat(Some("t"), &other).unwrap_err().kind,
            "ConflictException"
        );
        assert_eq!(r.repeat(None, &other), Ok(Repeat::New));
    }
}
