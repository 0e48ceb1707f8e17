//! RunMicrovm's constraints, checked before anything boots, with the AWS CLI's
//! wording (botocore's parameter validation), so scripts see the same messages.

use microvm_protocol::limits::{
    MAX_DURATION_SECONDS, MIN_IDLE_SECONDS, RUN_HOOK_PAYLOAD_SCHEMA_MAX,
};
use serde_json::{Map, Value};

/// Parameters in API (camelCase) form, in the order the AWS CLI's (1.46)
/// `--generate-cli-skeleton` prints them.
pub const MEMBERS: [&str; 10] = [
    "ingressNetworkConnectors",
    "egressNetworkConnectors",
    "imageIdentifier",
    "imageVersion",
    "executionRoleArn",
    "idlePolicy",
    "logging",
    "runHookPayload",
    "maximumDurationInSeconds",
    "clientToken",
];

/// The model's `NetworkConnectorList`: at most 10 strings of 1-2048 characters
/// (botocore checks the minimum; the maximum is the service's, checked here too since
/// this runner plays both).
fn connectors(errors: &mut Vec<String>, name: &str, v: &Value) {
    let Some(list) = v.as_array() else {
        errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, valid types: <class 'list'>, <class 'tuple'>"
        ));
        return;
    };
    if list.len() > 10 {
        errors.push(format!(
            "Invalid length for parameter {name}, value: {}, valid max length: 10",
            list.len()
        ));
    }
    for (i, c) in list.iter().enumerate() {
        string_len(errors, &format!("{name}[{i}]"), c, 1, 2048);
    }
}

const IDLE_POLICY_MEMBERS: [&str; 3] = [
    "maxIdleDurationSeconds",
    "suspendedDurationSeconds",
    "autoResumeEnabled",
];
const CLOUD_WATCH_MEMBERS: [&str; 2] = ["logGroup", "logStream"];
/// The model's maxima the service checks (botocore does not).
const IMAGE_IDENTIFIER_MAX: usize = 256;
const LOG_NAME_MAX: usize = 512;
const VERSION_MAX: usize = 2048;

fn int_range(errors: &mut Vec<String>, name: &str, v: &Value, min: i64, max: i64) {
    match v.as_i64() {
        None => errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, type: <class 'str'>, valid types: <class 'int'>"
        )),
        Some(n) if n < min => errors.push(format!(
            "Invalid value for parameter {name}, value: {n}, valid min value: {min}"
        )),
        Some(n) if n > max => errors.push(format!(
            "Invalid value for parameter {name}, value: {n}, valid max value: {max}"
        )),
        _ => {}
    }
}

fn string_len(errors: &mut Vec<String>, name: &str, v: &Value, min: usize, max: usize) {
    match v.as_str() {
        None => errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, valid types: <class 'str'>"
        )),
        // Lengths in characters, as botocore (Python's len) and the model count them.
        Some(s) if s.chars().count() < min => errors.push(format!(
            "Invalid length for parameter {name}, value: {}, valid min length: {min}",
            s.chars().count()
        )),
        Some(s) if s.chars().count() > max => errors.push(format!(
            "Invalid length for parameter {name}, value: {}, valid max length: {max}",
            s.chars().count()
        )),
        _ => {}
    }
}

/// A structure's members: an object whose keys are all known.
fn members<'a>(
    errors: &mut Vec<String>,
    name: &str,
    v: &'a Value,
    known: &[&str],
) -> Option<&'a Map<String, Value>> {
    let Some(m) = v.as_object() else {
        errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, valid types: <class 'dict'>"
        ));
        return None;
    };
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            errors.push(format!(
                "Unknown parameter in {name}: \"{k}\", must be one of: {}",
                known.join(", ")
            ));
        }
    }
    Some(m)
}

/// What the service refuses beyond what botocore checks before sending (it checks
/// only minimums): the model's maxima, in the service's words (a
/// `ValidationException`'s message). The agent itself takes payloads up to 16,384
/// bytes; the API does not (the model's 4,096, which people measured enforced).
pub fn service_limits(r: &Map<String, Value>) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut longest = |at: &str, v: Option<&Value>, max: usize| {
        if v.and_then(Value::as_str)
            .is_some_and(|s| s.chars().count() > max)
        {
            errors.push(format!(
                "Value at '{at}' failed to satisfy constraint: Member must have length less than or equal to {max}"
            ));
        }
    };
    longest(
        "runHookPayload",
        r.get("runHookPayload"),
        RUN_HOOK_PAYLOAD_SCHEMA_MAX,
    );
    longest(
        "imageIdentifier",
        r.get("imageIdentifier"),
        IMAGE_IDENTIFIER_MAX,
    );
    longest("imageVersion", r.get("imageVersion"), VERSION_MAX);
    let cloud_watch = r.get("logging").and_then(|l| l.get("cloudWatch"));
    let group = cloud_watch.and_then(|c| c.get("logGroup"));
    let stream = cloud_watch.and_then(|c| c.get("logStream"));
    longest("logging.cloudWatch.logGroup", group, LOG_NAME_MAX);
    longest("logging.cloudWatch.logStream", stream, LOG_NAME_MAX);
    // The model's patterns: a group of [a-zA-Z0-9_\-/.#]+, a stream without ':' or
    // '*' (CloudWatch Logs would refuse the agent's PutLogEvents later, silently).
    if let Some(g) = group.and_then(Value::as_str) {
        if !g
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c))
        {
            errors.push(format!(
                "Value '{g}' at 'logging.cloudWatch.logGroup' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_\\-/.#]+"
            ));
        }
    }
    if let Some(st) = stream.and_then(Value::as_str) {
        if st.contains([':', '*']) {
            errors.push(format!(
                "Value '{st}' at 'logging.cloudWatch.logStream' failed to satisfy constraint: Member must satisfy regular expression pattern: [^:*]*"
            ));
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(format!("1 validation error detected: {}", errors[0])),
        n => Err(format!(
            "{n} validation errors detected: {}",
            errors.join("; ")
        )),
    }
}

/// Check the request against RunMicrovm's constraints. Ok carries warnings.
pub fn validate(r: &Map<String, Value>) -> Result<Vec<String>, Vec<String>> {
    validate_with(r, MIN_IDLE_SECONDS)
}

/// [`validate`] with another idle minimum (the test-only setting).
pub fn validate_with(r: &Map<String, Value>, min_idle: u64) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let warnings = Vec::new();
    for k in r.keys() {
        if !MEMBERS.contains(&k.as_str()) {
            errors.push(format!(
                "Unknown parameter in input: \"{k}\", must be one of: {}",
                MEMBERS.join(", ")
            ));
        }
    }
    match r.get("imageIdentifier") {
        None => errors.push("Missing required parameter in input: \"imageIdentifier\"".into()),
        Some(v) => string_len(&mut errors, "imageIdentifier", v, 1, usize::MAX),
    }
    if let Some(v) = r.get("imageVersion") {
        string_len(&mut errors, "imageVersion", v, 1, usize::MAX);
        if v.as_str()
            .is_some_and(|s| s.chars().any(char::is_whitespace))
        {
            errors.push(format!(
                "Invalid value for parameter imageVersion, value: {v}, valid pattern: [^\\s]+"
            ));
        }
    }
    // botocore checks only the minimum (none): the maximum is the service's (below).
    if let Some(v) = r.get("runHookPayload") {
        string_len(&mut errors, "runHookPayload", v, 0, usize::MAX);
    }
    let max_duration = MAX_DURATION_SECONDS as i64;
    if let Some(v) = r.get("maximumDurationInSeconds") {
        int_range(&mut errors, "maximumDurationInSeconds", v, 1, max_duration);
    }
    for name in ["ingressNetworkConnectors", "egressNetworkConnectors"] {
        if let Some(v) = r.get(name) {
            connectors(&mut errors, name, v);
        }
    }
    if let Some(v) = r.get("clientToken") {
        string_len(&mut errors, "clientToken", v, 1, 128);
    }
    if let Some(v) = r.get("executionRoleArn") {
        if !is_role_arn(v) {
            errors.push(format!(
                "Invalid value for parameter executionRoleArn, value: {v}, valid pattern: arn:aws[a-zA-Z-]*:iam::\\d{{12}}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
            ));
        }
    }
    if let Some(v) = r.get("idlePolicy") {
        if let Some(p) = members(&mut errors, "idlePolicy", v, &IDLE_POLICY_MEMBERS) {
            // The model requires all three members, as botocore checks before sending.
            for m in IDLE_POLICY_MEMBERS {
                if !p.contains_key(m) {
                    errors.push(format!("Missing required parameter in idlePolicy: \"{m}\""));
                }
            }
            if let Some(m) = p.get("maxIdleDurationSeconds") {
                int_range(
                    &mut errors,
                    "idlePolicy.maxIdleDurationSeconds",
                    m,
                    min_idle as i64,
                    i64::MAX,
                );
            }
            if let Some(s) = p.get("suspendedDurationSeconds") {
                int_range(
                    &mut errors,
                    "idlePolicy.suspendedDurationSeconds",
                    s,
                    0,
                    i64::MAX,
                );
            }
            if let Some(a) = p.get("autoResumeEnabled") {
                if !a.is_boolean() {
                    errors.push(format!("Invalid type for parameter idlePolicy.autoResumeEnabled, value: {a}, valid types: <class 'bool'>"));
                }
            }
        }
    }
    if let Some(v) = r.get("logging") {
        logging(&mut errors, v);
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

pub(crate) fn is_role_arn(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "iam"
            && parts[4].len() == 12
            && parts[4].chars().all(|c| c.is_ascii_digit())
            && parts[5].starts_with("role/")
            && parts[5].len() > 5
    })
}

/// The `Logging` union: exactly one member, each member's own fields known.
pub(crate) fn logging(errors: &mut Vec<String>, v: &Value) {
    match v.as_object() {
        Some(m) if m.len() == 1 => {
            if let Some(d) = m.get("disabled") {
                members(errors, "logging.disabled", d, &[]);
            } else if let Some(c) = m.get("cloudWatch") {
                if let Some(c) = members(errors, "logging.cloudWatch", c, &CLOUD_WATCH_MEMBERS) {
                    for (k, s) in c {
                        if CLOUD_WATCH_MEMBERS.contains(&k.as_str()) && !s.is_string() {
                            errors.push(format!(
                                "Invalid type for parameter logging.cloudWatch.{k}, value: {s}, valid types: <class 'str'>"
                            ));
                        }
                    }
                }
            } else {
                errors.push(union_error(v));
            }
        }
        _ => errors.push(union_error(v)),
    }
}

fn union_error(v: &Value) -> String {
    format!(
        "Invalid value for parameter logging, value: {v}: exactly one of disabled, cloudWatch must be set"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Vec<String>, Vec<String>> {
        validate(v.as_object().unwrap())
    }

    #[test]
    fn logging_members_are_checked_too() {
        assert!(check(json!({"imageIdentifier": "i", "logging": {"disabled": {}}})).is_ok());
        assert!(check(json!({"imageIdentifier": "i",
            "logging": {"cloudWatch": {"logGroup": "/g", "logStream": "s"}}}))
        .is_ok());
        let e = check(json!({"imageIdentifier": "i", "logging": {"cloudWatch": {"group": "/g"}}}))
            .unwrap_err();
        assert_eq!(
            e,
            ["Unknown parameter in logging.cloudWatch: \"group\", must be one of: logGroup, logStream"]
        );
        let e = check(json!({"imageIdentifier": "i", "logging": {"cloudWatch": {"logGroup": 5}}}))
            .unwrap_err();
        assert!(
            e[0].contains("logging.cloudWatch.logGroup, value: 5"),
            "{e:?}"
        );
        let e = check(json!({"imageIdentifier": "i", "logging": {"disabled": true}})).unwrap_err();
        assert!(
            e[0].contains("Invalid type for parameter logging.disabled"),
            "{e:?}"
        );
        let e = check(json!({"imageIdentifier": "i", "logging": {"other": {}}})).unwrap_err();
        assert!(e[0].contains("exactly one of"), "{e:?}");
    }

    #[test]
    fn network_connectors_are_lists_of_bounded_strings() {
        let ok = json!({"imageIdentifier": "i",
            "egressNetworkConnectors": ["INTERNET_EGRESS"],
            "ingressNetworkConnectors": ["arn:aws:lambda:us-east-1:123456789012:aws-network-connector:HTTP_INGRESS"]});
        assert!(check(ok).is_ok());
        let errs = check(json!({"imageIdentifier": "i",
            "egressNetworkConnectors": ["", "x".repeat(2049)],
            "ingressNetworkConnectors": "HTTP_INGRESS"}))
        .unwrap_err();
        assert!(errs.contains(&"Invalid length for parameter egressNetworkConnectors[0], value: 0, valid min length: 1".to_string()), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.starts_with(
                "Invalid length for parameter egressNetworkConnectors[1], value: 2049"
            )),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("Invalid type for parameter ingressNetworkConnectors")),
            "{errs:?}"
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
        let errs =
            check(json!({"imageIdentifier": "i", "egressNetworkConnectors": eleven})).unwrap_err();
        assert_eq!(errs, ["Invalid length for parameter egressNetworkConnectors, value: 11, valid max length: 10"]);
    }

    #[test]
    fn limits_come_from_the_contract() {
        let at = json!({"imageIdentifier": "i", "runHookPayload": "x".repeat(RUN_HOOK_PAYLOAD_SCHEMA_MAX)});
        assert_eq!(service_limits(at.as_object().unwrap()), Ok(()));
        let over = json!({"imageIdentifier": "i", "runHookPayload": "x".repeat(RUN_HOOK_PAYLOAD_SCHEMA_MAX + 1)});
        // The client lets it through (botocore checks only minimums); the service not.
        assert!(check(over.clone()).is_ok());
        assert_eq!(
            service_limits(over.as_object().unwrap()),
            Err("1 validation error detected: Value at 'runHookPayload' failed to satisfy constraint: Member must have length less than or equal to 4096".into())
        );
        // Characters, not bytes: 4,096 of 'é' (8,192 bytes) are within the limit.
        let wide = json!({"imageIdentifier": "i", "runHookPayload": "é".repeat(RUN_HOOK_PAYLOAD_SCHEMA_MAX)});
        assert_eq!(service_limits(wide.as_object().unwrap()), Ok(()));
        let long = json!({"imageIdentifier": "i".repeat(257),
            "logging": {"cloudWatch": {"logGroup": "bad group!", "logStream": "a:b"}}});
        let e = service_limits(long.as_object().unwrap()).unwrap_err();
        assert!(e.starts_with("3 validation errors detected: Value at 'imageIdentifier' failed to satisfy constraint: Member must have length less than or equal to 256; Value 'bad group!' at 'logging.cloudWatch.logGroup'"), "{e}");
        assert!(e.ends_with("Value 'a:b' at 'logging.cloudWatch.logStream' failed to satisfy constraint: Member must satisfy regular expression pattern: [^:*]*"), "{e}");
        let fine = json!({"imageIdentifier": "i".repeat(256),
            "logging": {"cloudWatch": {"logGroup": "/aws/lambda-microvms/x_y-z.1#2", "logStream": "s/t"}}});
        assert_eq!(service_limits(fine.as_object().unwrap()), Ok(()));
        // All three members of an idle policy are required.
        let errs =
            check(json!({"imageIdentifier": "i", "idlePolicy": {"maxIdleDurationSeconds": 60}}))
                .unwrap_err();
        assert_eq!(
            errs,
            [
                "Missing required parameter in idlePolicy: \"suspendedDurationSeconds\"",
                "Missing required parameter in idlePolicy: \"autoResumeEnabled\"",
            ]
        );
        let policy = json!({"maxIdleDurationSeconds": MIN_IDLE_SECONDS - 1,
            "suspendedDurationSeconds": 0, "autoResumeEnabled": false});
        assert!(check(json!({"imageIdentifier": "i", "idlePolicy": policy.clone()})).is_err());
        assert!(validate_with(
            json!({"imageIdentifier": "i", "idlePolicy": policy})
                .as_object()
                .unwrap(),
            0
        )
        .is_ok());
    }
}
