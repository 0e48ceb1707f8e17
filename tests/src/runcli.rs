//! `run-microvm` parameters, the AWS CLI way: `--cli-input-json` first, then command
//! line options override it; JSON or shorthand syntax for structures; the API's
//! constraints checked with the CLI's wording ("Parameter validation failed:").

use serde_json::{json, Map, Value};

/// The run-hook payload limit the platform documents.
pub const PAYLOAD_MAX: usize = 16_384;
/// The limit the API's schema states; above it we warn.
pub const PAYLOAD_SCHEMA_MAX: usize = 4_096;
pub const MAX_DURATION: u64 = 28_800;
/// The platform's lower bound for maxIdleDurationSeconds.
pub const MIN_IDLE: u64 = 60;

/// Parameters in API (camelCase) form, in the order `--generate-cli-skeleton` prints.
pub const MEMBERS: [&str; 7] = [
    "imageIdentifier",
    "executionRoleArn",
    "idlePolicy",
    "logging",
    "runHookPayload",
    "maximumDurationInSeconds",
    "clientToken",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Command-line usage (exit 252, like `aws: error: ...`).
    Usage(String),
    /// Failed the API's constraints (exit 255, `Parameter validation failed:`).
    Validation(Vec<String>),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "aws: error: {m}"),
            CliError::Validation(v) => {
                write!(f, "\nParameter validation failed:\n{}", v.join("\n"))
            }
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 252,
            CliError::Validation(_) => 255,
        }
    }
}

/// What the runner was asked to do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunArgs {
    pub request: Map<String, Value>,
    pub skeleton: Option<String>,
    pub then: Vec<String>,
    pub interactive: bool,
    pub timeout_s: u64,
    pub warnings: Vec<String>,
    /// Host TCP port of the MicroVM's endpoint (0: any free port).
    pub endpoint_port: u16,
    /// Test-only: lowers the agent's 60 s minimum idle duration.
    pub test_min_idle_seconds: Option<u64>,
}

fn flag_member(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "--image-identifier" => "imageIdentifier",
        "--execution-role-arn" => "executionRoleArn",
        "--idle-policy" => "idlePolicy",
        "--logging" => "logging",
        "--run-hook-payload" => "runHookPayload",
        "--maximum-duration-in-seconds" => "maximumDurationInSeconds",
        "--client-token" => "clientToken",
        _ => return None,
    })
}

/// `file://path` reads the file, like the CLI; anything else is the value itself.
fn load(value: &str) -> Result<String, CliError> {
    match value.strip_prefix("file://") {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::Usage(format!("Unable to load paramfile {value}: {e}"))),
        None => Ok(value.to_string()),
    }
}

/// Shorthand syntax: `a=1,b=true,c={d=x,e=y}`, `disabled={}`.
pub fn parse_shorthand(s: &str) -> Result<Value, String> {
    fn scalar(v: &str) -> Value {
        match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
        }
    }
    fn object(chars: &[char], i: &mut usize, nested: bool) -> Result<Value, String> {
        let mut m = Map::new();
        loop {
            if nested && chars.get(*i) == Some(&'}') {
                *i += 1;
                return Ok(Value::Object(m));
            }
            let start = *i;
            while *i < chars.len() && chars[*i] != '=' {
                if chars[*i] == ',' || chars[*i] == '}' {
                    break;
                }
                *i += 1;
            }
            if chars.get(*i) != Some(&'=') {
                let got = chars.get(*i).map(|c| c.to_string()).unwrap_or("EOF".into());
                return Err(format!("Expected: '=', received: '{got}'"));
            }
            let key: String = chars[start..*i].iter().collect();
            *i += 1;
            let value = if chars.get(*i) == Some(&'{') {
                *i += 1;
                object(chars, i, true)?
            } else {
                let vs = *i;
                while *i < chars.len() && chars[*i] != ',' && chars[*i] != '}' {
                    *i += 1;
                }
                scalar(&chars[vs..*i].iter().collect::<String>())
            };
            if key.is_empty() {
                return Err("Expected: a key before '='".into());
            }
            m.insert(key, value);
            match chars.get(*i) {
                Some(',') => *i += 1,
                Some('}') if nested => {}
                None if !nested => return Ok(Value::Object(m)),
                None => return Err("Expected: '}', received: 'EOF'".into()),
                Some(c) => return Err(format!("Expected: ',', received: '{c}'")),
            }
        }
    }
    let chars: Vec<char> = s.trim().chars().collect();
    let mut i = 0;
    object(&chars, &mut i, false)
}

/// A structure option: JSON if it looks like JSON, else shorthand.
fn structure(flag: &str, value: &str) -> Result<Value, CliError> {
    let text = load(value)?;
    let t = text.trim_start();
    if t.starts_with('{') {
        serde_json::from_str(t).map_err(|e| {
            CliError::Usage(format!(
                "Error parsing parameter '{flag}': Invalid JSON: {e}\nJSON received: {text}"
            ))
        })
    } else {
        parse_shorthand(t).map_err(|e| {
            CliError::Usage(format!(
                "Error parsing parameter '{flag}': {e} for input:\n{text}"
            ))
        })
    }
}

pub fn parse(args: &[String]) -> Result<RunArgs, CliError> {
    let mut out = RunArgs {
        timeout_s: 900,
        ..RunArgs::default()
    };
    let mut cli_input: Option<Map<String, Value>> = None;
    let mut given = Map::new();
    let mut i = 0;
    let value = |i: &mut usize, flag: &str| -> Result<String, CliError> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| CliError::Usage(format!("argument {flag}: expected one argument")))
    };
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--cli-input-json" => {
                let text = load(&value(&mut i, flag)?)?;
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(m)) => cli_input = Some(m),
                    _ => {
                        return Err(CliError::Usage(format!(
                        "Error parsing parameter 'cli-input-json': Invalid JSON received: {text}"
                    )))
                    }
                }
            }
            "--generate-cli-skeleton" => {
                // Optional value: input (default) or output.
                let next = args.get(i + 1).map(String::as_str);
                out.skeleton = Some(match next {
                    Some(v @ ("input" | "output")) => {
                        i += 1;
                        v.to_string()
                    }
                    _ => "input".into(),
                });
            }
            "--then" => {
                out.then = value(&mut i, flag)?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--interactive" => out.interactive = true,
            "--endpoint-port" => {
                let v = value(&mut i, flag)?;
                out.endpoint_port = v.parse().map_err(|_| {
                    CliError::Usage(format!(
                        "argument --endpoint-port: invalid int value: '{v}'"
                    ))
                })?;
            }
            "--test-min-idle-seconds" => {
                let v = value(&mut i, flag)?;
                out.test_min_idle_seconds = Some(v.parse().map_err(|_| {
                    CliError::Usage(format!(
                        "argument --test-min-idle-seconds: invalid int value: '{v}'"
                    ))
                })?);
            }
            "--timeout" => {
                let v = value(&mut i, flag)?;
                out.timeout_s = v.parse().map_err(|_| {
                    CliError::Usage(format!("argument --timeout: invalid int value: '{v}'"))
                })?;
            }
            _ => {
                let Some(member) = flag_member(flag) else {
                    return Err(CliError::Usage(format!("Unknown options: {flag}")));
                };
                let v = value(&mut i, flag)?;
                let parsed = match member {
                    "idlePolicy" | "logging" => structure(flag, &v)?,
                    "maximumDurationInSeconds" => {
                        v.parse::<i64>().map(Value::from).map_err(|_| {
                            CliError::Usage(format!("argument {flag}: invalid int value: '{v}'"))
                        })?
                    }
                    _ => Value::String(v),
                };
                given.insert(member.to_string(), parsed);
            }
        }
        i += 1;
    }
    let mut request = cli_input.unwrap_or_default();
    request.extend(given);
    if out.skeleton.is_none() {
        let min_idle = out.test_min_idle_seconds.unwrap_or(MIN_IDLE);
        out.warnings = validate_with(&request, min_idle).map_err(CliError::Validation)?;
    }
    out.request = request;
    Ok(out)
}

fn int_range(errors: &mut Vec<String>, name: &str, v: &Value, min: i64, max: Option<i64>) {
    match v.as_i64() {
        None => errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, type: <class 'str'>, valid types: <class 'int'>"
        )),
        Some(n) if n < min => errors.push(format!(
            "Invalid value for parameter {name}, value: {n}, valid min value: {min}"
        )),
        Some(n) if max.is_some_and(|m| n > m) => errors.push(format!(
            "Invalid value for parameter {name}, value: {n}, valid max value: {}",
            max.unwrap_or_default()
        )),
        _ => {}
    }
}

fn string_len(errors: &mut Vec<String>, name: &str, v: &Value, min: usize, max: usize) {
    match v.as_str() {
        None => errors.push(format!(
            "Invalid type for parameter {name}, value: {v}, valid types: <class 'str'>"
        )),
        Some(s) if s.len() < min => errors.push(format!(
            "Invalid length for parameter {name}, value: {}, valid min length: {min}",
            s.len()
        )),
        Some(s) if s.len() > max => errors.push(format!(
            "Invalid length for parameter {name}, value: {}, valid max length: {max}",
            s.len()
        )),
        _ => {}
    }
}

/// Check the request against RunMicrovm's constraints. Ok carries warnings.
pub fn validate(r: &Map<String, Value>) -> Result<Vec<String>, Vec<String>> {
    validate_with(r, MIN_IDLE)
}

/// [`validate`] with another idle minimum (the test-only setting).
pub fn validate_with(r: &Map<String, Value>, min_idle: u64) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
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
        Some(v) => string_len(&mut errors, "imageIdentifier", v, 1, 2048),
    }
    if let Some(v) = r.get("runHookPayload") {
        string_len(&mut errors, "runHookPayload", v, 0, PAYLOAD_MAX);
        if let Some(s) = v.as_str() {
            if s.len() > PAYLOAD_SCHEMA_MAX && s.len() <= PAYLOAD_MAX {
                warnings.push(format!(
                    "warning: runHookPayload is {} bytes: above the {PAYLOAD_SCHEMA_MAX} bytes the API schema states, within the {PAYLOAD_MAX} bytes the platform documents",
                    s.len()
                ));
            }
        }
    }
    if let Some(v) = r.get("maximumDurationInSeconds") {
        int_range(
            &mut errors,
            "maximumDurationInSeconds",
            v,
            1,
            Some(MAX_DURATION as i64),
        );
    }
    if let Some(v) = r.get("clientToken") {
        string_len(&mut errors, "clientToken", v, 1, 128);
    }
    if let Some(v) = r.get("executionRoleArn") {
        let ok = v.as_str().is_some_and(|s| {
            let parts: Vec<&str> = s.splitn(6, ':').collect();
            parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "iam"
                && parts[4].len() == 12
                && parts[4].chars().all(|c| c.is_ascii_digit())
                && parts[5].starts_with("role/")
                && parts[5].len() > 5
        });
        if !ok {
            errors.push(format!(
                "Invalid value for parameter executionRoleArn, value: {v}, valid pattern: arn:aws[a-zA-Z-]*:iam::\\d{{12}}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
            ));
        }
    }
    if let Some(v) = r.get("idlePolicy") {
        match v.as_object() {
            None => errors.push(format!(
                "Invalid type for parameter idlePolicy, value: {v}, valid types: <class 'dict'>"
            )),
            Some(p) => {
                for k in p.keys() {
                    if ![
                        "maxIdleDurationSeconds",
                        "suspendedDurationSeconds",
                        "autoResumeEnabled",
                    ]
                    .contains(&k.as_str())
                    {
                        errors.push(format!("Unknown parameter in idlePolicy: \"{k}\", must be one of: maxIdleDurationSeconds, suspendedDurationSeconds, autoResumeEnabled"));
                    }
                }
                match p.get("maxIdleDurationSeconds") {
                    None => errors.push(
                        "Missing required parameter in idlePolicy: \"maxIdleDurationSeconds\""
                            .into(),
                    ),
                    Some(m) => int_range(
                        &mut errors,
                        "idlePolicy.maxIdleDurationSeconds",
                        m,
                        min_idle as i64,
                        Some(MAX_DURATION as i64),
                    ),
                }
                if let Some(s) = p.get("suspendedDurationSeconds") {
                    int_range(
                        &mut errors,
                        "idlePolicy.suspendedDurationSeconds",
                        s,
                        0,
                        Some(MAX_DURATION as i64),
                    );
                }
                if let Some(a) = p.get("autoResumeEnabled") {
                    if !a.is_boolean() {
                        errors.push(format!("Invalid type for parameter idlePolicy.autoResumeEnabled, value: {a}, valid types: <class 'bool'>"));
                    }
                }
            }
        }
    }
    if let Some(v) = r.get("logging") {
        match v.as_object() {
            Some(m) if m.len() == 1 && (m.contains_key("disabled") || m.contains_key("cloudWatch")) => {}
            _ => errors.push(format!(
                "Invalid value for parameter logging, value: {v}: exactly one of disabled, cloudWatch must be set"
            )),
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

/// `--generate-cli-skeleton input|output`.
pub fn skeleton(kind: &str) -> Value {
    if kind == "output" {
        return json!({
            "microvmId": "", "imageArn": "", "state": "PENDING", "stateReason": "",
            "endpoint": "", "executionRoleArn": "",
            "idlePolicy": {"maxIdleDurationSeconds": 0, "suspendedDurationSeconds": 0, "autoResumeEnabled": true},
            "maximumDurationInSeconds": 0, "startedAt": ""
        });
    }
    json!({
        "imageIdentifier": "",
        "executionRoleArn": "",
        "idlePolicy": {"maxIdleDurationSeconds": 0, "suspendedDurationSeconds": 0, "autoResumeEnabled": true},
        "logging": {"disabled": {}, "cloudWatch": {"logGroup": "", "logStream": ""}},
        "runHookPayload": "",
        "maximumDurationInSeconds": 0,
        "clientToken": ""
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<RunArgs, CliError> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn shorthand() {
        assert_eq!(
            parse_shorthand(
                "maxIdleDurationSeconds=900,suspendedDurationSeconds=300,autoResumeEnabled=true"
            )
            .unwrap(),
            json!({"maxIdleDurationSeconds":900,"suspendedDurationSeconds":300,"autoResumeEnabled":true})
        );
        assert_eq!(
            parse_shorthand("disabled={}").unwrap(),
            json!({"disabled":{}})
        );
        assert_eq!(
            parse_shorthand("cloudWatch={logGroup=/a/b,logStream=s}").unwrap(),
            json!({"cloudWatch":{"logGroup":"/a/b","logStream":"s"}})
        );
        assert!(parse_shorthand("oops")
            .unwrap_err()
            .contains("Expected: '='"));
        assert!(parse_shorthand("a={b=1").is_err());
    }

    #[test]
    fn options_override_cli_input_json() {
        let a = p(&[
            "--cli-input-json",
            r#"{"imageIdentifier":"img","runHookPayload":"from-json","maximumDurationInSeconds":60}"#,
            "--run-hook-payload",
            "from-flag",
            "--idle-policy",
            "maxIdleDurationSeconds=120",
        ])
        .unwrap();
        assert_eq!(a.request["runHookPayload"], "from-flag");
        assert_eq!(a.request["maximumDurationInSeconds"], 60);
        assert_eq!(
            a.request["idlePolicy"],
            json!({"maxIdleDurationSeconds":120})
        );
    }

    #[test]
    fn constraints_with_the_cli_wording() {
        let e = p(&["--run-hook-payload", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 255);
        assert!(e.to_string().contains("Parameter validation failed:\nMissing required parameter in input: \"imageIdentifier\""), "{e}");
        let big = "x".repeat(16_385);
        let e = p(&["--image-identifier", "i", "--run-hook-payload", &big]).unwrap_err();
        assert!(e.to_string().contains("Invalid length for parameter runHookPayload, value: 16385, valid max length: 16384"), "{e}");
        let ok = "x".repeat(16_384);
        let a = p(&["--image-identifier", "i", "--run-hook-payload", &ok]).unwrap();
        assert_eq!(a.warnings.len(), 1);
        assert!(a.warnings[0].contains("4096"));
        assert!(p(&[
            "--image-identifier",
            "i",
            "--run-hook-payload",
            &"x".repeat(4096)
        ])
        .unwrap()
        .warnings
        .is_empty());
        for (d, ok) in [("0", false), ("1", true), ("28800", true), ("28801", false)] {
            let r = p(&[
                "--image-identifier",
                "i",
                "--maximum-duration-in-seconds",
                d,
            ]);
            assert_eq!(r.is_ok(), ok, "{d}");
        }
        let e = p(&[
            "--image-identifier",
            "i",
            "--maximum-duration-in-seconds",
            "ten",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 252);
        assert!(e.to_string().contains("invalid int value: 'ten'"));
        let e = p(&[
            "--image-identifier",
            "i",
            "--idle-policy",
            "maxIdleDurationSeconds=59",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("valid min value: 60"), "{e}");
        let e = p(&[
            "--image-identifier",
            "i",
            "--idle-policy",
            "suspendedDurationSeconds=5",
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Missing required parameter in idlePolicy"),
            "{e}"
        );
        let e = p(&[
            "--image-identifier",
            "i",
            "--logging",
            "disabled={},cloudWatch={}",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let e = p(&["--image-identifier", "i", "--execution-role-arn", "role"]).unwrap_err();
        assert!(e.to_string().contains("executionRoleArn"), "{e}");
        assert!(p(&[
            "--image-identifier",
            "i",
            "--execution-role-arn",
            "arn:aws:iam::123456789012:role/x"
        ])
        .is_ok());
        let e = p(&[
            "--image-identifier",
            "i",
            "--client-token",
            &"t".repeat(129),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("clientToken"), "{e}");
        let e = p(&[
            "--cli-input-json",
            r#"{"imageIdentifier":"i","color":"red"}"#,
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Unknown parameter in input: \"color\""),
            "{e}"
        );
        let e = p(&["--image-identifier"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aws: error: argument --image-identifier: expected one argument"
        );
        let e = p(&["--idle-policy", "{bad"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("Error parsing parameter '--idle-policy': Invalid JSON"),
            "{e}"
        );
        assert!(matches!(p(&["--frobnicate"]), Err(CliError::Usage(_))));
    }

    #[test]
    fn skeletons_skip_validation() {
        let a = p(&["--generate-cli-skeleton"]).unwrap();
        assert_eq!(a.skeleton.as_deref(), Some("input"));
        assert_eq!(skeleton("input").as_object().unwrap().len(), MEMBERS.len());
        assert_eq!(
            p(&["--generate-cli-skeleton", "output"])
                .unwrap()
                .skeleton
                .as_deref(),
            Some("output")
        );
        assert!(skeleton("output").get("microvmId").is_some());
    }
}
