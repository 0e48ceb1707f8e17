//! Property tests (issue 11): the image config and the host's request bodies.
//!
//! - no input makes a parser panic, and every refusal names a field that is in the
//!   input (or `(body)`, or a required field that is missing);
//! - valid documents parse, and keep what they say;
//! - one fault planted in a valid document is refused naming exactly that field.

use super::image::{ImageConfig, MAX_LOG_BUFFER, MIN_LOG_BUFFER};
use super::json::FieldError;
use super::run::{parse_empty, parse_resume, RequestError, RunRequest};
use base64::Engine;
use microvm_protocol::limits::{
    MAX_DURATION_SECONDS, MAX_MICROVM_ID, MAX_RUN_HOOK_PAYLOAD, MIN_ENTROPY_BYTES,
};
use microvm_protocol::Hook;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------
// Helpers

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The object at `path` in `v`, created (replacing whatever was there) as needed.
fn obj<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for key in path {
        let m = as_obj(cur);
        cur = m.entry(key.to_string()).or_insert_with(|| json!({}));
    }
    as_obj(cur)
}

fn as_obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Whether `path` (as `FieldError::field` spells it: `a.b[2].c`) leads somewhere in
/// `v`. Object keys may themselves hold `.` or `[`, so every key that fits is tried.
fn path_exists(v: &Value, path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, child)| match path.strip_prefix(k.as_str()) {
                Some("") => true,
                Some(rest) if rest.starts_with('[') => path_exists(child, rest),
                Some(rest) => rest
                    .strip_prefix('.')
                    .is_some_and(|r| path_exists(child, r)),
                None => false,
            }),
        // serde's derived structs also accept a JSON array, field by field (this
        // property found `/resume` taking `[null,null,"..."]` as `{"entropy":...}`);
        // the parsers now refuse an array where an object belongs, naming the array
        // (config::json::from_json_objects). A field under an array still counts as
        // present, which that refusal never needs.
        Value::Array(_) if !path.starts_with('[') => true,
        Value::Array(a) => path
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(i, rest)| Some((a.get(i.parse::<usize>().ok()?)?, rest)))
            .is_some_and(|(child, rest)| {
                rest.is_empty()
                    || rest.starts_with('[') && path_exists(child, rest)
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|r| path_exists(child, r))
            }),
        _ => false,
    }
}

/// A refusal must name a field: `(body)` for the document as a whole, else a path
/// into the document, or one of the `required` fields (refused because missing).
fn names_a_field(e: &FieldError, input: &Value, required: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(!e.message.is_empty(), "{:?}", e);
    prop_assert!(
        e.field == "(body)" || required.contains(&e.field.as_str()) || path_exists(input, &e.field),
        "{:?} names no field of {}",
        e,
        input
    );
    Ok(())
}

fn request_field(e: &RequestError) -> &FieldError {
    match e {
        RequestError::Invalid(f) | RequestError::TooLarge(f) => f,
    }
}

// ---------------------------------------------------------------------------------
// Arbitrary input

/// Keys the parsers know (at any depth), and some they do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "imageName", "command", "env", "workingDir", "hooks", "port",
            "microvmImageHooks", "microvmHooks", "ready", "readyTimeoutInSeconds",
            "validate", "validateTimeoutInSeconds", "run", "runTimeoutInSeconds",
            "resume", "resumeTimeoutInSeconds", "suspend", "suspendTimeoutInSeconds",
            "terminate", "terminateTimeoutInSeconds", "logging", "disabled", "cloudWatch",
            "logGroup", "logStream", "onApplicationExit", "logs", "bufferBytes",
            "whenFull", "mirrorToConsole", "microvmId", "runHookPayload", "idlePolicy",
            "maxIdleDurationSeconds", "suspendedDurationSeconds", "autoResumeEnabled",
            "maximumDurationInSeconds", "region", "credentials", "accessKeyId",
            "secretAccessKey", "sessionToken", "expiration", "clock", "unixTimeNanos",
            "entropy", "user", "additionalOsCapabilities", "resources",
            "minimumMemoryInMiB",
        ]).prop_map(String::from),
        1 => "[a-zA-Z.\\[\\]0-9 =]{0,8}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0u64, 1, 5, 60, 61, 3600, 3601, 9000, 65535, 65536, 28800, 28801
        ])
        .prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![
            "ENABLED",
            "DISABLED",
            "enabled",
            "restart",
            "terminate",
            "block",
            "dropOldest",
            "/a",
            "a",
            "",
            "a:b",
            "\u{0}",
            "AAAA",
            "!!",
        ])
        .prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| Value::from(b64(&b))),
        ".{0,16}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A valid document with one random subtree replaced, removed or added: arbitrary
/// input that still gets past the first few fields.
fn perturbed(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    let edit = (any::<Index>(), key(), prop::option::of(json_value()));
    (valid, prop::collection::vec(edit, 1..4)).prop_map(|(mut v, edits)| {
        for (at, k, new) in edits {
            // An object of the document (any depth), then key `k` in it.
            let mut objects = Vec::new();
            object_pointers(&v, String::new(), &mut objects);
            let at = &objects[at.index(objects.len())];
            if let Some(Value::Object(m)) = v.pointer_mut(at) {
                match new {
                    Some(x) => m.insert(k, x),
                    None => m.remove(&k),
                };
            }
        }
        v
    })
}

/// JSON pointers (RFC 6901) to every object in `v`.
fn object_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                object_pointers(child, format!("{at}/{k}"), out);
            }
            out.push(at);
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                object_pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------
// Valid documents

fn opt_insert(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

fn toggle() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["ENABLED", "DISABLED"])
}

fn hooks() -> impl Strategy<Value = Value> {
    let image = prop::collection::vec((toggle(), 1u64..=3600, any::<(bool, bool)>()), 2);
    let runtime = prop::collection::vec((toggle(), 1u64..=60, any::<(bool, bool)>()), 4);
    (
        // 80 is the metadata service's (a unit test covers it).
        prop::option::of((1u32..=65535).prop_filter("not 80", |p| *p != 80)),
        image,
        runtime,
        any::<(bool, bool)>(),
    )
        .prop_map(|(port, image, runtime, (with_image, with_runtime))| {
            let mut h = Map::new();
            opt_insert(&mut h, "port", port.map(Value::from));
            let group = |names: &[&str], settings: Vec<(&str, u64, (bool, bool))>| {
                let mut g = Map::new();
                for (name, (t, secs, (with_t, with_secs))) in names.iter().zip(settings) {
                    opt_insert(&mut g, name, with_t.then(|| Value::from(t)));
                    let k = format!("{name}TimeoutInSeconds");
                    opt_insert(&mut g, &k, with_secs.then(|| Value::from(secs)));
                }
                Value::Object(g)
            };
            if with_image {
                h.insert(
                    "microvmImageHooks".into(),
                    group(&["ready", "validate"], image),
                );
            }
            if with_runtime {
                let names = ["run", "resume", "suspend", "terminate"];
                h.insert("microvmHooks".into(), group(&names, runtime));
            }
            Value::Object(h)
        })
}

fn logging() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"disabled": {}})),
        (
            prop::option::of(prop_oneof!["[a-zA-Z0-9_./#-]{1,40}", "[a-z]{512}"]),
            prop::option::of(prop_oneof!["[^:*]{1,40}", "[a-z]{512}"]),
        )
            .prop_map(|(g, s)| {
                let mut cw = Map::new();
                opt_insert(&mut cw, "logGroup", g.map(Value::from));
                opt_insert(&mut cw, "logStream", s.map(Value::from));
                json!({ "cloudWatch": cw })
            }),
    ]
}

fn valid_image() -> impl Strategy<Value = Value> {
    (
        prop_oneof!["[a-zA-Z0-9_.#-]{1,40}", "[a-zA-Z0-9_.#-]{128}"],
        (
            "/[a-z/]{1,12}",
            prop::collection::vec("[^\u{0}]{0,10}", 0..4),
        ),
        prop::option::of(prop::collection::btree_map(
            "[^=\u{0}\\s]{1,8}",
            "[^\u{0}]{0,10}",
            0..4,
        )),
        prop::option::of("/[^\u{0}]{0,12}"),
        prop::option::of(hooks()),
        prop::option::of(logging()),
        prop::option::of(prop::sample::select(vec!["terminate", "restart"])),
        prop::option::of((
            prop::option::of(MIN_LOG_BUFFER..=MAX_LOG_BUFFER),
            prop::option::of(prop::sample::select(vec!["block", "dropOldest"])),
            prop::option::of(any::<bool>()),
        )),
    )
        .prop_map(
            |(name, (program, args), env, dir, hooks, logging, exit, logs)| {
                let mut m = Map::new();
                m.insert("imageName".into(), name.into());
                let command: Vec<String> = std::iter::once(program).chain(args).collect();
                m.insert("command".into(), command.into());
                opt_insert(&mut m, "env", env.map(|e| json!(e)));
                opt_insert(&mut m, "workingDir", dir.map(Value::from));
                opt_insert(&mut m, "hooks", hooks);
                opt_insert(&mut m, "logging", logging);
                opt_insert(&mut m, "onApplicationExit", exit.map(Value::from));
                opt_insert(
                    &mut m,
                    "logs",
                    logs.map(|(b, w, c)| {
                        let mut l = Map::new();
                        opt_insert(&mut l, "bufferBytes", b.map(Value::from));
                        opt_insert(&mut l, "whenFull", w.map(Value::from));
                        opt_insert(&mut l, "mirrorToConsole", c.map(Value::from));
                        Value::Object(l)
                    }),
                );
                Value::Object(m)
            },
        )
}

fn credentials() -> impl Strategy<Value = Value> {
    (
        "[A-Z0-9]{1,20}",
        "[!-~]{1,20}",
        prop::option::of("[!-~]{1,20}"),
        prop::option::of("20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T00:00:00Z"),
    )
        .prop_map(|(id, secret, token, exp)| {
            let mut c = Map::new();
            c.insert("accessKeyId".into(), id.into());
            c.insert("secretAccessKey".into(), secret.into());
            opt_insert(&mut c, "sessionToken", token.map(Value::from));
            opt_insert(&mut c, "expiration", exp.map(Value::from));
            Value::Object(c)
        })
}

/// The fields `/run` and `/resume` share: clock, entropy, credentials.
fn freshness() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(prop::collection::vec(any::<u8>(), MIN_ENTROPY_BYTES..80)),
        prop::option::of(credentials()),
    )
        .prop_map(|(clock, entropy, creds)| {
            let mut m = Map::new();
            opt_insert(&mut m, "clock", clock.map(|n| json!({"unixTimeNanos": n})));
            opt_insert(&mut m, "entropy", entropy.map(|b| Value::from(b64(&b))));
            opt_insert(&mut m, "credentials", creds);
            m
        })
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,64}",
        1 => (0usize..=MAX_RUN_HOOK_PAYLOAD / 2).prop_map(|n| "é".repeat(n)),
        1 => Just("x".repeat(MAX_RUN_HOOK_PAYLOAD)),
    ]
}

fn valid_run() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            "[ -~]{1,40}",
            "[ -~]{128}",
            "[a-zé]{1,64}".prop_filter("at most 128 bytes", |s| s.len() <= MAX_MICROVM_ID),
        ],
        prop::option::of(payload()),
        prop::option::of(logging()),
        prop::option::of((
            1u64..100_000,
            prop::option::of(any::<u64>()),
            prop::option::of(any::<bool>()),
        )),
        prop::option::of(1..=MAX_DURATION_SECONDS),
        // Region names are DNS labels (config::run::valid_region).
        prop::option::of("[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?"),
        freshness(),
    )
        .prop_map(|(id, payload, logging, idle, max, region, mut m)| {
            m.insert("microvmId".into(), id.into());
            opt_insert(&mut m, "runHookPayload", payload.map(Value::from));
            opt_insert(&mut m, "logging", logging);
            opt_insert(
                &mut m,
                "idlePolicy",
                idle.map(|(max_idle, suspended, auto)| {
                    let mut p = Map::new();
                    p.insert("maxIdleDurationSeconds".into(), max_idle.into());
                    opt_insert(
                        &mut p,
                        "suspendedDurationSeconds",
                        suspended.map(Value::from),
                    );
                    opt_insert(&mut p, "autoResumeEnabled", auto.map(Value::from));
                    Value::Object(p)
                }),
            );
            opt_insert(&mut m, "maximumDurationInSeconds", max.map(Value::from));
            opt_insert(&mut m, "region", region.map(Value::from));
            Value::Object(m)
        })
}

// ---------------------------------------------------------------------------------
// One fault planted in a valid document

/// A string that is not a valid log group (the alphabet is [a-zA-Z0-9_-/.#], 1-512).
fn bad_log_group() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{513,514}",
        "[a-z]{0,4}[ :*@!é\u{0}][a-z]{0,4}",
    ]
}

fn bad_log_stream() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{513,514}",
        "[a-z]{0,4}[:*][a-z]{0,4}"
    ]
}

/// A JSON value that is not a valid `logging` union, and the field to blame.
fn bad_logging() -> impl Strategy<Value = (Value, String)> {
    prop_oneof![
        bad_log_group().prop_map(|g| (
            json!({"cloudWatch": {"logGroup": g}}),
            "logging.cloudWatch.logGroup".to_string()
        )),
        bad_log_stream().prop_map(|s| (
            json!({"cloudWatch": {"logStream": s}}),
            "logging.cloudWatch.logStream".to_string()
        )),
        Just((json!({"syslog": {}}), "logging".to_string())),
        Just((
            json!({"disabled": {"x": 1}}),
            "logging.disabled.x".to_string()
        )),
        "zz[a-z]{0,6}".prop_map(|k| (
            json!({"cloudWatch": {k.clone(): "g"}}),
            format!("logging.cloudWatch.{k}")
        )),
    ]
}

/// An unsigned field's out-of-range number, or something that is not one (not
/// `null`: for an optional field that means absent).
fn not_in(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Value> {
    let (lo, hi) = (*range.start(), *range.end());
    prop_oneof![
        (0..lo).prop_map(Value::from),
        (hi + 1..=u64::MAX).prop_map(Value::from),
        (i64::MIN..0).prop_map(Value::from),
        Just(Value::from("5")),
        Just(Value::from(1.5)),
    ]
}

#[derive(Debug, Clone)]
enum ImageFault {
    Set(Vec<String>, Value, String),
    RemoveRequired(&'static str),
    CommandNul(Index, Index),
    EnvKey(String),
    EnvValue(Index, Value),
}

fn image_fault() -> impl Strategy<Value = ImageFault> {
    let set = |path: &[&str], v: Value, field: &str| {
        ImageFault::Set(
            path.iter().map(|s| s.to_string()).collect(),
            v,
            field.into(),
        )
    };
    let hook = prop::sample::select(Hook::ALL.to_vec());
    prop_oneof![
        prop_oneof![
            Just(Value::from("")),
            "[a-z]{129,130}".prop_map(Value::from),
            "[a-z]{0,4}[ /:@!é\u{0}][a-z]{0,4}".prop_map(Value::from),
            Just(Value::from(5)),
        ]
        .prop_map(move |v| set(&["imageName"], v, "imageName")),
        Just(set(&["command"], json!([]), "command")),
        Just(set(&["command"], json!("/bin/sh"), "command")),
        Just(set(&["command"], json!(["", "a"]), "command[0]")),
        (any::<Index>(), any::<Index>()).prop_map(|(i, at)| ImageFault::CommandNul(i, at)),
        prop_oneof![
            "[A-Z]{0,3}=[A-Z]{0,3}",
            "[A-Z]{0,3}\u{0}[A-Z]{0,3}",
            "[A-Z]{0,3}[ \t\n][A-Z]{0,3}",
            "[A-Z]{257}",
            Just(String::new())
        ]
        .prop_map(ImageFault::EnvKey),
        (
            any::<Index>(),
            prop_oneof![
                Just(Value::from("a\u{0}b")),
                Just(Value::from("é".repeat(4097))),
                Just(Value::from(1)),
                Just(Value::Null),
                Just(json!(["a"])),
            ]
        )
            .prop_map(|(i, v)| ImageFault::EnvValue(i, v)),
        prop_oneof![
            Just(Value::from("")),
            "[a-z.][a-z/]{0,8}".prop_map(Value::from)
        ]
        .prop_map(move |v| set(&["workingDir"], v, "workingDir")),
        not_in(1..=65535).prop_map(move |v| set(&["hooks", "port"], v, "hooks.port")),
        (hook.clone(), any::<bool>()).prop_flat_map(move |(h, huge)| {
            let group = if h.is_image_build() {
                "microvmImageHooks"
            } else {
                "microvmHooks"
            };
            let range = if h.is_image_build() { 1..=3600 } else { 1..=60 };
            let key = format!("{}TimeoutInSeconds", h.name());
            let field = format!("hooks.{group}.{key}");
            // Half the time a number just past the range, to find off-by-ones.
            let bad = if huge {
                not_in(range).boxed()
            } else {
                prop::sample::select(vec![0u64, if h.is_image_build() { 3601 } else { 61 }])
                    .prop_map(Value::from)
                    .boxed()
            };
            bad.prop_map(move |v| {
                ImageFault::Set(
                    vec!["hooks".into(), group.into(), key.clone()],
                    v,
                    field.clone(),
                )
            })
        }),
        (
            hook,
            prop::sample::select(vec![
                json!("enabled"),
                json!("ON"),
                json!(true),
                json!(null)
            ])
        )
            .prop_map(|(h, v)| {
                let group = if h.is_image_build() {
                    "microvmImageHooks"
                } else {
                    "microvmHooks"
                };
                ImageFault::Set(
                    vec!["hooks".into(), group.into(), h.name().into()],
                    v,
                    format!("hooks.{group}.{}", h.name()),
                )
            }),
        bad_logging().prop_map(|(v, f)| ImageFault::Set(vec!["logging".into()], v, f)),
        prop_oneof![
            (0..MIN_LOG_BUFFER as u64).prop_map(Value::from),
            (MAX_LOG_BUFFER as u64 + 1..=u64::MAX).prop_map(Value::from),
            Just(Value::from(-1)),
        ]
        .prop_map(move |v| set(&["logs", "bufferBytes"], v, "logs.bufferBytes")),
        prop::sample::select(vec![json!("drop"), json!("Block"), json!(1)]).prop_map(move |v| set(
            &["logs", "whenFull"],
            v,
            "logs.whenFull"
        )),
        prop::sample::select(vec![json!("reboot"), json!("Restart"), json!(null)])
            .prop_map(move |v| set(&["onApplicationExit"], v, "onApplicationExit")),
        // An unknown field, at the top or in any object of the schema.
        (
            prop::sample::select(vec![
                vec![],
                vec!["hooks"],
                vec!["hooks", "microvmImageHooks"],
                vec!["hooks", "microvmHooks"],
                vec!["logs"],
            ]),
            "zz[a-z]{0,6}",
        )
            .prop_map(|(at, k)| {
                let mut path: Vec<String> = at.iter().map(|s| s.to_string()).collect();
                path.push(k);
                let field = path.join(".");
                ImageFault::Set(path, json!(1), field)
            }),
        prop::sample::select(vec!["imageName", "command"]).prop_map(ImageFault::RemoveRequired),
    ]
}

impl ImageFault {
    /// Plant the fault; returns the field the refusal must name.
    fn plant(&self, doc: &mut Value) -> String {
        match self {
            ImageFault::Set(path, v, field) => {
                let (last, parents) = path.split_last().expect("a path");
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                obj(doc, &parents).insert(last.clone(), v.clone());
                field.clone()
            }
            ImageFault::RemoveRequired(k) => {
                as_obj(doc).remove(*k);
                "(body)".into()
            }
            ImageFault::CommandNul(i, at) => {
                let cmd = as_obj(doc)["command"].as_array_mut().expect("command");
                let i = i.index(cmd.len());
                let arg = cmd[i].as_str().expect("a string").to_string();
                let cut = (0..=arg.len())
                    .filter(|&c| arg.is_char_boundary(c))
                    .nth(at.index(arg.chars().count() + 1))
                    .unwrap_or(0);
                cmd[i] = format!("{}\u{0}{}", &arg[..cut], &arg[cut..]).into();
                format!("command[{i}]")
            }
            ImageFault::EnvKey(k) => {
                obj(doc, &["env"]).insert(k.clone(), "v".into());
                format!("env.{k}")
            }
            ImageFault::EnvValue(i, v) => {
                let env = obj(doc, &["env"]);
                if env.is_empty() {
                    env.insert("K".into(), "v".into());
                }
                let k = env.keys().nth(i.index(env.len())).cloned().expect("a key");
                env.insert(k.clone(), v.clone());
                format!("env.{k}")
            }
        }
    }
}

#[derive(Debug, Clone)]
enum RunFault {
    Set(Vec<String>, Value, String),
    Remove(Vec<String>, String),
    PayloadTooLarge(String),
}

/// Faults in the fields `/run` and `/resume` share.
fn freshness_fault() -> impl Strategy<Value = RunFault> {
    let set = |path: &[&str], v: Value, field: &str| {
        RunFault::Set(
            path.iter().map(|s| s.to_string()).collect(),
            v,
            field.into(),
        )
    };
    prop_oneof![
        prop_oneof![
            (i64::MIN..0).prop_map(Value::from),
            Just(Value::from("1")),
            Just(Value::from(1.5)),
            Just(Value::Null),
        ]
        .prop_map(move |v| set(&["clock", "unixTimeNanos"], v, "clock.unixTimeNanos")),
        Just(RunFault::Remove(
            vec!["clock".into(), "unixTimeNanos".into()],
            "clock".into()
        )),
        "zz[a-z]{0,6}".prop_map(|k| RunFault::Set(
            vec!["clock".into(), k.clone()],
            json!(1),
            format!("clock.{k}")
        )),
        prop_oneof![
            // Too short once decoded.
            prop::collection::vec(any::<u8>(), 0..MIN_ENTROPY_BYTES)
                .prop_map(|b| Value::from(b64(&b))),
            // Not base64 (a character outside the alphabet, or bad padding).
            "[A-Za-z0-9+/]{40,60}[!*.\\- ][A-Za-z0-9+/]{3}".prop_map(Value::from),
            prop::collection::vec(any::<u8>(), MIN_ENTROPY_BYTES..60)
                .prop_map(|b| Value::from(b64(&b).trim_end_matches('=').to_string() + "=====")),
            Just(Value::from(32)),
            Just(json!([1, 2])),
        ]
        .prop_map(move |v| set(&["entropy"], v, "entropy")),
        prop::sample::select(vec!["accessKeyId", "secretAccessKey"]).prop_map(
            |k| RunFault::Remove(vec!["credentials".into(), k.into()], "credentials".into())
        ),
        "zz[a-z]{0,6}".prop_map(|k| RunFault::Set(
            vec!["credentials".into(), k.clone()],
            json!("x"),
            format!("credentials.{k}")
        )),
        Just(set(
            &["credentials", "accessKeyId"],
            json!(7),
            "credentials.accessKeyId"
        )),
        "zz[a-zA-Z]{0,6}".prop_map(|k| RunFault::Set(vec![k.clone()], json!(null), k)),
    ]
}

fn run_fault() -> impl Strategy<Value = RunFault> {
    let set = |path: &[&str], v: Value, field: &str| {
        RunFault::Set(
            path.iter().map(|s| s.to_string()).collect(),
            v,
            field.into(),
        )
    };
    prop_oneof![
        2 => freshness_fault(),
        1 => Just(RunFault::Remove(vec!["microvmId".into()], "microvmId".into())),
        1 => prop_oneof![
            Just(Value::from("")),
            "[a-z]{129,130}".prop_map(Value::from),
            Just(Value::from(5)),
            Just(Value::Null),
        ]
        .prop_map(move |v| set(&["microvmId"], v, "microvmId")),
        1 => prop::sample::select(vec![json!(1), json!(null), json!({})])
            .prop_map(move |v| set(&["runHookPayload"], v, "runHookPayload")),
        1 => prop_oneof![
            (MAX_RUN_HOOK_PAYLOAD + 1..MAX_RUN_HOOK_PAYLOAD + 64).prop_map(|n| "p".repeat(n)),
            Just(format!("{}x", "é".repeat(MAX_RUN_HOOK_PAYLOAD / 2))),
        ]
        .prop_map(RunFault::PayloadTooLarge),
        1 => bad_logging().prop_map(|(v, f)| RunFault::Set(vec!["logging".into()], v, f)),
        1 => prop_oneof![Just(Value::from(0)), (i64::MIN..0).prop_map(Value::from), Just(Value::from("9"))]
            .prop_map(move |v| set(
                &["idlePolicy", "maxIdleDurationSeconds"],
                v,
                "idlePolicy.maxIdleDurationSeconds"
            )),
        1 => Just(RunFault::Remove(
            vec!["idlePolicy".into(), "maxIdleDurationSeconds".into()],
            "idlePolicy".into()
        )),
        1 => not_in(1..=MAX_DURATION_SECONDS)
            .prop_map(move |v| set(&["maximumDurationInSeconds"], v, "maximumDurationInSeconds")),
        1 => prop::sample::select(vec![
                json!(""),
                json!(1),
                json!("us-east-1; rm -rf /"),
                json!("us-east-1\ncredential_process = /bin/sh"),
                json!("US-EAST-1"),
            ])
            .prop_map(move |v| set(&["region"], v, "region")),
    ]
}

impl RunFault {
    fn plant(&self, doc: &mut Value) -> String {
        match self {
            RunFault::Set(path, v, field) => {
                let (last, parents) = path.split_last().expect("a path");
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                obj(doc, &parents).insert(last.clone(), v.clone());
                field.clone()
            }
            RunFault::Remove(path, field) => {
                let (last, parents) = path.split_last().expect("a path");
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                let m = obj(doc, &parents);
                m.remove(last);
                // An object left empty must still be wrong without that field.
                if parents.first() == Some(&"credentials") {
                    m.entry("accessKeyId").or_insert("a".into());
                    m.entry("secretAccessKey").or_insert("s".into());
                    m.remove(last);
                }
                field.clone()
            }
            RunFault::PayloadTooLarge(p) => {
                as_obj(doc).insert("runHookPayload".into(), p.clone().into());
                "runHookPayload".into()
            }
        }
    }

    fn too_large(&self) -> bool {
        matches!(self, RunFault::PayloadTooLarge(_))
    }
}

// ---------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes (mostly not JSON): every parser returns, none panics, and a
    /// refusal carries a field and a message.
    #[test]
    fn no_bytes_make_a_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let check = |e: &FieldError| !e.field.is_empty() && !e.message.is_empty();
        if let Err(e) = ImageConfig::parse(&bytes) { prop_assert!(check(&e), "{:?}", e); }
        if let Err(e) = RunRequest::parse(&bytes) { prop_assert!(check(request_field(&e))); }
        if let Err(e) = parse_resume(&bytes) { prop_assert!(check(request_field(&e))); }
        if let Err(e) = parse_empty(&bytes) { prop_assert!(check(request_field(&e))); }
    }

    /// Arbitrary JSON, built from the fields the parsers know: a refusal names
    /// `(body)`, a path that is in the document, or a required field.
    #[test]
    fn arbitrary_json_is_refused_naming_a_field_of_it(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = ImageConfig::parse(&bytes) { names_a_field(&e, &v, &[])?; }
        if let Err(e) = RunRequest::parse(&bytes) {
            names_a_field(request_field(&e), &v, &["microvmId"])?;
        }
        if let Err(e) = parse_resume(&bytes) { names_a_field(request_field(&e), &v, &[])?; }
        if let Err(e) = parse_empty(&bytes) { names_a_field(request_field(&e), &v, &[])?; }
    }

    /// Valid documents with random subtrees replaced, removed or added (so parsing
    /// gets deep before it fails): the same, for each parser.
    #[test]
    fn perturbed_documents_are_refused_naming_a_field_of_them(
        image in perturbed(valid_image()),
        run in perturbed(valid_run()),
        resume in perturbed(freshness().prop_map(Value::Object)),
    ) {
        if let Err(e) = ImageConfig::parse(&serde_json::to_vec(&image).unwrap()) {
            names_a_field(&e, &image, &[])?;
        }
        if let Err(e) = RunRequest::parse(&serde_json::to_vec(&run).unwrap()) {
            names_a_field(request_field(&e), &run, &["microvmId"])?;
        }
        if let Err(e) = parse_resume(&serde_json::to_vec(&resume).unwrap()) {
            names_a_field(request_field(&e), &resume, &[])?;
        }
    }

    /// A valid image config parses, keeps what it says, and survives a round trip
    /// through its own serialization.
    #[test]
    fn valid_image_configs_parse_and_round_trip(doc in valid_image()) {
        let cfg = ImageConfig::parse(&serde_json::to_vec(&doc).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{e} in {doc}")))?;
        prop_assert_eq!(Value::from(cfg.image_name.clone()), doc["imageName"].clone());
        prop_assert_eq!(json!(cfg.command), doc["command"].clone());
        if let Some(p) = doc.pointer("/hooks/port") {
            prop_assert_eq!(Value::from(cfg.hooks.port()), p.clone());
        }
        for h in Hook::ALL {
            let group = if h.is_image_build() { "microvmImageHooks" } else { "microvmHooks" };
            let (_, t) = cfg.hooks.setting(h);
            if let Some(s) = doc.pointer(&format!("/hooks/{group}/{}TimeoutInSeconds", h.name())) {
                prop_assert_eq!(Value::from(t.as_secs()), s.clone());
            }
        }
        let again = ImageConfig::parse(&serde_json::to_vec(&cfg).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(again, cfg);
    }

    /// One fault in a valid image config: refused, naming exactly that field.
    #[test]
    fn one_fault_in_an_image_config_is_named(mut doc in valid_image(), fault in image_fault()) {
        let field = fault.plant(&mut doc);
        match ImageConfig::parse(&serde_json::to_vec(&doc).unwrap()) {
            Err(e) => prop_assert_eq!(&e.field, &field, "{} in {}", e, doc),
            Ok(_) => prop_assert!(false, "accepted {} ({:?})", doc, fault),
        }
    }

    /// A valid `/run` body parses and keeps what it says; the application's body is
    /// exactly its microvmId and runHookPayload.
    #[test]
    fn valid_run_requests_parse_and_keep_their_fields(doc in valid_run()) {
        let run = RunRequest::parse(&serde_json::to_vec(&doc).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{e} in {doc}")))?;
        prop_assert_eq!(Value::from(run.microvm_id.clone()), doc["microvmId"].clone());
        let payload = doc.get("runHookPayload").cloned().unwrap_or(Value::from(""));
        prop_assert_eq!(Value::from(run.run_hook_payload.clone()), payload.clone());
        let app: Value = serde_json::from_slice(&run.app_body()).unwrap();
        prop_assert_eq!(app, json!({"microvmId": doc["microvmId"], "runHookPayload": payload}));
        prop_assert_eq!(
            run.maximum_duration.map(|d| Value::from(d.as_secs())),
            doc.get("maximumDurationInSeconds").cloned()
        );
        prop_assert_eq!(run.region.map(Value::from), doc.get("region").cloned());
        prop_assert_eq!(
            run.fresh.entropy.map(|b| Value::from(b64(&b))),
            doc.get("entropy").cloned()
        );
        prop_assert_eq!(
            run.fresh.clock.map(|c| json!({"unixTimeNanos": c.unix_time_nanos})),
            doc.get("clock").cloned()
        );
        prop_assert_eq!(
            run.fresh.credentials.map(|c| serde_json::to_value(c).unwrap()),
            doc.get("credentials").cloned()
        );
    }

    /// One fault in a valid `/run` body: refused naming exactly that field, 413 for
    /// a payload over 16,384 bytes and 400 for everything else.
    #[test]
    fn one_fault_in_a_run_request_is_named(mut doc in valid_run(), fault in run_fault()) {
        let field = fault.plant(&mut doc);
        match RunRequest::parse(&serde_json::to_vec(&doc).unwrap()) {
            Err(RequestError::TooLarge(e)) => {
                prop_assert!(fault.too_large(), "413 for {:?}", fault);
                prop_assert_eq!(&e.field, &field);
            }
            Err(RequestError::Invalid(e)) => {
                prop_assert!(!fault.too_large(), "400 for {:?}", fault);
                prop_assert_eq!(&e.field, &field, "{} in {}", e, doc);
            }
            Ok(_) => prop_assert!(false, "accepted {} ({:?})", doc, fault),
        }
    }

    /// `/resume`: a valid body parses to what it says; one fault is named; and the
    /// hooks without fields take only an empty body or `{}`.
    #[test]
    fn resume_and_empty_bodies(
        fresh in freshness(),
        fault in freshness_fault(),
        ws in "[ \t\r\n]{0,4}",
        key in "[a-zA-Z]{1,8}",
    ) {
        let doc = Value::Object(fresh);
        let got = parse_resume(&serde_json::to_vec(&doc).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{e} in {doc}")))?;
        prop_assert_eq!(got.entropy.map(|b| Value::from(b64(&b))), doc.get("entropy").cloned());
        prop_assert_eq!(got.clock.map(|c| Value::from(c.unix_time_nanos)), doc.pointer("/clock/unixTimeNanos").cloned());
        let mut bad = doc.clone();
        let field = fault.plant(&mut bad);
        match parse_resume(&serde_json::to_vec(&bad).unwrap()) {
            Err(RequestError::Invalid(e)) => prop_assert_eq!(&e.field, &field, "{} in {}", e, bad),
            other => prop_assert!(false, "{:?} for {}", other, bad),
        }
        prop_assert_eq!(parse_resume(ws.as_bytes()), Ok(Default::default()));
        prop_assert_eq!(parse_empty(ws.as_bytes()), Ok(()));
        prop_assert_eq!(parse_empty(format!("{ws}{{}}{ws}").as_bytes()), Ok(()));
        match parse_empty(json!({ key.clone(): 1 }).to_string().as_bytes()) {
            Err(RequestError::Invalid(e)) => prop_assert_eq!(e.field, key),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
