//! The CloudWatch Logs subset that `serve` answers, for the agent's AWS SDK client and
//! for `aws logs` and boto3: awsJson1.1 (`X-Amz-Target: Logs_20140328.<Operation>`),
//! with shapes, constraints and error names from botocore's `logs` 2014-03-28 model.
//! Operations: CreateLogGroup, CreateLogStream, DescribeLogGroups, DescribeLogStreams,
//! PutLogEvents, GetLogEvents, FilterLogEvents, DeleteLogGroup, DeleteLogStream.
//!
//! On disk, under the root: a directory per group holding `group.json` (its name and
//! creation time) and, per stream, `<stem>.json` (name and creation time) and
//! `<stem>.jsonl` (its events in arrival order, one `{"timestamp", "message",
//! "ingestionTime"}` object a line). Appends reach the kernel before the reply, without
//! fsync: a crash of this process loses nothing, a crash of the machine may.
//! A stem is the name in hex when that makes a short file name, else `~` and a hash of
//! the name (a 512-character name is longer than a file name may be); a `-<n>` suffix
//! keeps stems unique. The metadata, not the stem, says the name.
//!
//! Memory: every event of every stream is held in memory from `open` on (about 40 bytes
//! plus its message each), sorted by timestamp, so reads never touch the disk. That
//! suits a local tool; a store of many gigabytes would want an index over the files.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::ops::{Bound, Range};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

const OPERATIONS: [&str; 9] = [
    "CreateLogGroup",
    "CreateLogStream",
    "DescribeLogGroups",
    "DescribeLogStreams",
    "PutLogEvents",
    "GetLogEvents",
    "FilterLogEvents",
    "DeleteLogGroup",
    "DeleteLogStream",
];

const HOUR_MS: i64 = 3_600_000;
// PutLogEvents limits, from the operation's documentation in the model.
const BATCH_MAX_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD_BYTES: usize = 26;
const BATCH_MAX_EVENTS: usize = 10_000;
const BATCH_MAX_SPAN_MS: i64 = 24 * HOUR_MS;
const TOO_OLD_MS: i64 = 14 * 24 * HOUR_MS;
const TOO_NEW_MS: i64 = 2 * HOUR_MS;
/// A page of GetLogEvents or FilterLogEvents: what fits in 1 MB, up to 10,000 events.
const PAGE_MAX_BYTES: usize = 1_048_576;
const PAGE_MAX_EVENTS: i64 = 10_000;
const DESCRIBE_MAX: i64 = 50;
const NAME_MAX_CHARS: usize = 512;
const IDENTIFIER_MAX_CHARS: usize = 2048;
const FILTER_PATTERN_MAX_CHARS: usize = 1024;
/// FilterLogEvents answers newest first only for a startTime from 2024-01-01 UTC on.
const NEWEST_FIRST_FROM_MS: i64 = 1_704_067_200_000;
const GROUP_PATTERN: &str = r"[\.\-_/#A-Za-z0-9]+";
/// Hex doubles a name: 100 bytes make a 200-byte stem, well under NAME_MAX (255).
const HEX_STEM_MAX_BYTES: usize = 100;
const GROUP_META: &str = "group.json";
/// Violations listed in one InvalidParameterException (all are counted).
const VIOLATIONS_LISTED: usize = 10;

/// The CloudWatch Logs store: groups, streams and their events, on disk under one root
/// and (see the module's notes) in memory.
pub struct LogStore {
    state: Mutex<State>,
}

/// One awsJson1.1 answer: 200 with the output, or an error status with
/// `{"__type": <error name>, "message": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsReply {
    pub status: u16,
    pub body: Value,
}

impl LogStore {
    /// Opens (creating if needed) a store rooted at `root`; groups and streams already on disk are loaded.
    pub fn open(root: &std::path::Path) -> std::io::Result<LogStore> {
        let groups = disk::load(root)?;
        Ok(LogStore {
            state: Mutex::new(State {
                root: root.to_path_buf(),
                groups,
            }),
        })
    }

    /// One awsJson1.1 call: `operation` is the part after `Logs_20140328.`; `now_ms` is the ingestion clock (Unix ms).
    pub fn handle(&self, operation: &str, body: &[u8], now_ms: i64) -> LogsReply {
        match self.dispatch(operation, body, now_ms) {
            Ok(body) => LogsReply { status: 200, body },
            Err(f) => f.reply(),
        }
    }

    fn dispatch(&self, operation: &str, body: &[u8], now: i64) -> Result<Value, Fault> {
        if !OPERATIONS.contains(&operation) {
            return Err(Fault::new(
                "UnknownOperationException",
                format!("Unknown operation {operation}"),
            ));
        }
        let body = parse_body(body)?;
        let p = &mut Params::new(&body)?;
        // Requests are read and checked before the lock: only the store waits on it.
        match operation {
            "CreateLogGroup" => {
                let r = NewGroup::parse(p)?;
                self.lock().create_group(r, now)
            }
            "CreateLogStream" => {
                let r = NewStream::parse(p)?;
                self.lock().create_stream(r, now)
            }
            "DescribeLogGroups" => {
                let r = GroupQuery::parse(p)?;
                Ok(self.lock().describe_groups(&r))
            }
            "DescribeLogStreams" => {
                let r = StreamQuery::parse(p)?;
                self.lock().describe_streams(&r)
            }
            "PutLogEvents" => {
                let r = Put::parse(p)?;
                self.lock().put(&r, now)
            }
            "GetLogEvents" => {
                let r = Get::parse(p)?;
                self.lock().get(&r)
            }
            "FilterLogEvents" => {
                let r = Filter::parse(p)?;
                self.lock().filter(&r)
            }
            "DeleteLogGroup" => {
                let r = NewGroup::parse(p)?;
                self.lock().delete_group(r)
            }
            _ => {
                let r = NewStream::parse(p)?;
                self.lock().delete_stream(r)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is made after its disk write and cannot panic half-way, so
        // a poisoned lock still guards a consistent store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
struct Fault {
    status: u16,
    kind: &'static str,
    message: String,
}

impl Fault {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Fault {
            status: 400,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterException", message)
    }

    fn serialization(message: impl Into<String>) -> Self {
        Self::new("SerializationException", message)
    }

    fn no_group() -> Self {
        Self::new(
            "ResourceNotFoundException",
            "The specified log group does not exist.",
        )
    }

    fn no_stream() -> Self {
        Self::new(
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
        )
    }

    fn bad_token() -> Self {
        Self::invalid("The specified nextToken is invalid.")
    }

    /// The store's own failure (disk full, permissions): the service's fault, so a
    /// client retries instead of dropping its batch.
    fn storage(e: std::io::Error) -> Self {
        Fault {
            status: 500,
            kind: "ServiceUnavailableException",
            message: format!("the local log store failed on disk: {e}"),
        }
    }

    fn reply(self) -> LogsReply {
        LogsReply {
            status: self.status,
            body: json!({"__type": self.kind, "message": self.message}),
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading requests: type errors are SerializationException at once; constraint
// violations are collected and answered together, as the service's validator does.

fn parse_body(body: &[u8]) -> Result<Value, Fault> {
    // Some clients send no body at all for an operation without parameters.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| Fault::serialization(format!("Malformed JSON: {e}")))
}

/// The name Jackson gives a JSON token, which the service's messages quote.
fn token_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "VALUE_NULL",
        Value::Bool(true) => "VALUE_TRUE",
        Value::Bool(false) => "VALUE_FALSE",
        Value::Number(n) if n.is_f64() => "VALUE_NUMBER_FLOAT",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::String(_) => "VALUE_STRING",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}

fn mismatch(v: &Value, wanted: &str) -> Fault {
    Fault::serialization(format!(
        "{} can not be converted to {wanted}",
        token_kind(v)
    ))
}

fn as_str(v: &Value) -> Result<&str, Fault> {
    v.as_str().ok_or_else(|| mismatch(v, "a String"))
}

fn as_long(v: &Value) -> Result<i64, Fault> {
    v.as_i64().ok_or_else(|| mismatch(v, "a Long"))
}

fn as_int(v: &Value) -> Result<i64, Fault> {
    v.as_i64()
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or_else(|| mismatch(v, "an Integer"))
}

fn as_bool(v: &Value) -> Result<bool, Fault> {
    v.as_bool().ok_or_else(|| mismatch(v, "a Boolean"))
}

fn as_list(v: &Value) -> Result<&[Value], Fault> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| mismatch(v, "a list"))
}

fn as_object(v: &Value) -> Result<&Map<String, Value>, Fault> {
    v.as_object().ok_or_else(|| mismatch(v, "a structure"))
}

/// Lengths are counted as the service counts them: UTF-16 code units.
fn length(s: &str) -> usize {
    s.encode_utf16().count()
}

fn group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')
}

fn identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '#' | '+' | '=' | '/' | ':' | ',' | '.' | '@' | '-')
}

struct Params<'a> {
    map: &'a Map<String, Value>,
    violations: Vec<String>,
}

impl<'a> Params<'a> {
    fn new(body: &'a Value) -> Result<Self, Fault> {
        Ok(Params {
            map: as_object(body)?,
            violations: Vec::new(),
        })
    }

    /// A member, absent when missing or null (the service treats both alike).
    fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, Fault> {
        self.value(key).map(as_str).transpose()
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, Fault> {
        self.value(key).map(as_bool).transpose()
    }

    fn list(&self, key: &str) -> Result<Option<&'a [Value]>, Fault> {
        self.value(key).map(as_list).transpose()
    }

    fn violation(&mut self, at: &str, value: &str, rule: impl Display) {
        self.violations.push(format!(
            "Value '{value}' at '{at}' failed to satisfy constraint: Member must {rule}"
        ));
    }

    fn missing(&mut self, at: &str) {
        self.violations.push(format!(
            "Value null at '{at}' failed to satisfy constraint: Member must not be null"
        ));
    }

    /// A required member's value; a missing one is recorded, and `finish` then
    /// refuses the request before the empty stand-in is used.
    fn required(&mut self, key: &str, v: Option<&'a str>) -> &'a str {
        if v.is_none() {
            self.missing(key);
        }
        v.unwrap_or_default()
    }

    fn check_length(&mut self, at: &str, s: &str, min: usize, max: usize) {
        let n = length(s);
        if n < min {
            self.violation(
                at,
                s,
                format_args!("have length greater than or equal to {min}"),
            );
        } else if n > max {
            self.violation(
                at,
                s,
                format_args!("have length less than or equal to {max}"),
            );
        }
    }

    /// A list's length in 1..=max (the value is shown by its size: a batch can be 1 MB).
    fn check_count(&mut self, at: &str, n: usize, max: usize) {
        let shown = format!("[{n} elements]");
        if n == 0 {
            self.violation(at, "[]", "have length greater than or equal to 1");
        } else if n > max {
            self.violation(
                at,
                &shown,
                format_args!("have length less than or equal to {max}"),
            );
        }
    }

    fn check_group_name(&mut self, at: &str, s: &str) {
        self.check_length(at, s, 1, NAME_MAX_CHARS);
        if !s.is_empty() && !s.chars().all(group_char) {
            self.violation(
                at,
                s,
                format_args!("satisfy regular expression pattern: {GROUP_PATTERN}"),
            );
        }
    }

    fn check_stream_name(&mut self, at: &str, s: &str) {
        self.check_length(at, s, 1, NAME_MAX_CHARS);
        if s.contains([':', '*']) {
            self.violation(at, s, "satisfy regular expression pattern: [^:*]*");
        }
    }

    /// The string member `key`, if present, checked by `check`.
    fn checked(
        &mut self,
        key: &str,
        check: fn(&mut Self, &str, &str),
    ) -> Result<Option<&'a str>, Fault> {
        let v = self.string(key)?;
        if let Some(s) = v {
            check(self, key, s);
        }
        Ok(v)
    }

    fn group_name(&mut self, key: &str) -> Result<Option<&'a str>, Fault> {
        self.checked(key, Self::check_group_name)
    }

    fn required_group_name(&mut self, key: &str) -> Result<&'a str, Fault> {
        let v = self.group_name(key)?;
        Ok(self.required(key, v))
    }

    fn stream_name(&mut self, key: &str) -> Result<Option<&'a str>, Fault> {
        self.checked(key, Self::check_stream_name)
    }

    fn required_stream_name(&mut self, key: &str) -> Result<&'a str, Fault> {
        let v = self.stream_name(key)?;
        Ok(self.required(key, v))
    }

    fn group_identifier(&mut self, key: &str) -> Result<Option<&'a str>, Fault> {
        self.checked(key, Self::check_identifier)
    }

    fn check_identifier(&mut self, at: &str, s: &str) {
        self.check_length(at, s, 1, IDENTIFIER_MAX_CHARS);
        if !s.chars().all(identifier_char) {
            self.violation(at, s, r"satisfy regular expression pattern: [\w#+=/:,.@-]*");
        }
    }

    /// Where a read looks: `logGroupName` or `logGroupIdentifier` (checked by `finish`).
    fn group_selector(&mut self) -> Result<GroupSelector<'a>, Fault> {
        Ok(GroupSelector {
            name: self.group_name("logGroupName")?,
            identifier: self.group_identifier("logGroupIdentifier")?,
        })
    }

    fn timestamp(&mut self, key: &str) -> Result<Option<i64>, Fault> {
        let v = self.value(key).map(as_long).transpose()?;
        if let Some(n) = v.filter(|n| *n < 0) {
            self.violation(key, &n.to_string(), "have value greater than or equal to 0");
        }
        Ok(v)
    }

    /// An integer `limit` in 1..=max; `default` when absent.
    fn limit(&mut self, key: &str, max: i64, default: i64) -> Result<usize, Fault> {
        let n = self.value(key).map(as_int).transpose()?.unwrap_or(default);
        if n < 1 {
            self.violation(key, &n.to_string(), "have value greater than or equal to 1");
        } else if n > max {
            self.violation(
                key,
                &n.to_string(),
                format_args!("have value less than or equal to {max}"),
            );
        }
        Ok(usize::try_from(n.clamp(1, max)).unwrap_or(1))
    }

    fn token(&mut self, key: &str) -> Result<Option<&'a str>, Fault> {
        let v = self.string(key)?;
        if let Some(s) = v {
            self.check_length(key, s, 1, usize::MAX);
        }
        Ok(v)
    }

    fn finish(&mut self) -> Result<(), Fault> {
        let n = self.violations.len();
        if n == 0 {
            return Ok(());
        }
        let listed: Vec<&str> = self
            .violations
            .iter()
            .take(VIOLATIONS_LISTED)
            .map(String::as_str)
            .collect();
        let s = if n == 1 { "" } else { "s" };
        Err(Fault::invalid(format!(
            "{n} validation error{s} detected: {}",
            listed.join("; ")
        )))
    }
}

struct GroupSelector<'a> {
    name: Option<&'a str>,
    identifier: Option<&'a str>,
}

impl<'a> GroupSelector<'a> {
    /// The group's name: exactly one of the two members, an identifier being a name
    /// or an ARN (`arn:...:log-group:NAME`; the model's pattern admits no `:*`).
    fn resolve(&self) -> Result<&'a str, Fault> {
        match (self.name, self.identifier) {
            (Some(_), Some(_)) => Err(Fault::invalid(
                "LogGroupName and LogGroupIdentifier cannot both be specified",
            )),
            (None, None) => Err(Fault::invalid(
                "Either LogGroupName or LogGroupIdentifier must be specified",
            )),
            (Some(name), None) => Ok(name),
            (None, Some(id)) => Ok(group_of_identifier(id)),
        }
    }
}

fn group_of_identifier(id: &str) -> &str {
    match id.split_once(":log-group:") {
        Some((_, name)) if id.starts_with("arn:") => name,
        _ => id,
    }
}

// ---------------------------------------------------------------------------------
// Requests

/// CreateLogGroup and DeleteLogGroup.
struct NewGroup<'a> {
    group: &'a str,
}

impl<'a> NewGroup<'a> {
    // kmsKeyId, tags, logGroupClass and deletionProtectionEnabled are accepted and not kept.
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let group = p.required_group_name("logGroupName")?;
        p.finish()?;
        Ok(NewGroup { group })
    }
}

/// CreateLogStream and DeleteLogStream.
struct NewStream<'a> {
    group: &'a str,
    stream: &'a str,
}

impl<'a> NewStream<'a> {
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let group = p.required_group_name("logGroupName")?;
        let stream = p.required_stream_name("logStreamName")?;
        p.finish()?;
        Ok(NewStream { group, stream })
    }
}

struct GroupQuery<'a> {
    prefix: Option<&'a str>,
    /// `logGroupNamePattern`: a case-sensitive substring.
    pattern: Option<&'a str>,
    identifiers: Option<Vec<&'a str>>,
    after: Option<String>,
    limit: usize,
}

impl<'a> GroupQuery<'a> {
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let prefix = p.group_name("logGroupNamePrefix")?;
        let pattern = p.string("logGroupNamePattern")?;
        if let Some(s) = pattern {
            p.check_length("logGroupNamePattern", s, 0, NAME_MAX_CHARS);
            if !s.chars().all(group_char) {
                p.violation(
                    "logGroupNamePattern",
                    s,
                    r"satisfy regular expression pattern: [\.\-_/#A-Za-z0-9]*",
                );
            }
        }
        let identifiers = p.list("logGroupIdentifiers")?;
        let mut ids = None;
        if let Some(list) = identifiers {
            ids = Some(names(
                p,
                "logGroupIdentifiers",
                list,
                50,
                Params::check_identifier,
            )?);
        }
        let token = p.token("nextToken")?;
        let limit = p.limit("limit", DESCRIBE_MAX, DESCRIBE_MAX)?;
        p.finish()?;
        if prefix.is_some() && pattern.is_some() {
            return Err(Fault::invalid(
                "LogGroupNamePrefix and LogGroupNamePattern are mutually exclusive",
            ));
        }
        let after = token.map(|t| parse_name_token(t, "g/")).transpose()?;
        Ok(GroupQuery {
            prefix,
            pattern,
            identifiers: ids,
            after,
            limit,
        })
    }

    fn admits(&self, name: &str) -> bool {
        self.prefix.is_none_or(|p| name.starts_with(p))
            && self.pattern.is_none_or(|p| name.contains(p))
            && self
                .identifiers
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|id| group_of_identifier(id) == name))
    }
}

/// A list of names, at most `max`, each checked by `check` at `at.N.member`.
fn names<'a>(
    p: &mut Params<'a>,
    at: &str,
    list: &'a [Value],
    max: usize,
    check: fn(&mut Params<'a>, &str, &str),
) -> Result<Vec<&'a str>, Fault> {
    p.check_count(at, list.len(), max);
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let s = as_str(v)?;
        check(p, &format!("{at}.{}.member", i + 1), s);
        out.push(s);
    }
    Ok(out)
}

struct StreamQuery<'a> {
    group: &'a str,
    prefix: Option<&'a str>,
    by_time: bool,
    descending: bool,
    after: Option<StreamKey>,
    limit: usize,
}

/// A stream's place in a DescribeLogStreams listing: (last event's timestamp, or -1
/// without events, when ordered by time; else 0) then its name.
type StreamKey = (i64, String);

impl<'a> StreamQuery<'a> {
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let selector = p.group_selector()?;
        let prefix = p.stream_name("logStreamNamePrefix")?;
        let order = p.string("orderBy")?;
        if let Some(o) = order.filter(|o| !matches!(*o, "LogStreamName" | "LastEventTime")) {
            p.violation(
                "orderBy",
                o,
                "satisfy enum value set: [LogStreamName, LastEventTime]",
            );
        }
        let descending = p.flag("descending")?.unwrap_or(false);
        let token = p.token("nextToken")?;
        let limit = p.limit("limit", DESCRIBE_MAX, DESCRIBE_MAX)?;
        p.finish()?;
        let group = selector.resolve()?;
        let by_time = order == Some("LastEventTime");
        if by_time && prefix.is_some() {
            return Err(Fault::invalid(
                "Cannot order by LastEventTime with a logStreamNamePrefix.",
            ));
        }
        let after = token.map(parse_stream_token).transpose()?;
        Ok(StreamQuery {
            group,
            prefix,
            by_time,
            descending,
            after,
            limit,
        })
    }

    fn key_of(&self, s: &Stream) -> StreamKey {
        let t = if self.by_time {
            s.events.last().map_or(-1, |e| e.timestamp)
        } else {
            0
        };
        (t, s.name.clone())
    }

    /// Whether a stream at `key` comes after the page that ended at `mark`.
    fn follows(&self, key: &StreamKey, mark: &StreamKey) -> bool {
        if self.descending {
            key < mark
        } else {
            key > mark
        }
    }
}

struct Input<'a> {
    timestamp: i64,
    message: &'a str,
}

struct Put<'a> {
    group: &'a str,
    stream: &'a str,
    events: Vec<Input<'a>>,
}

impl<'a> Put<'a> {
    // sequenceToken is ignored, as the service now ignores it; so is entity.
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let group = p.required_group_name("logGroupName")?;
        let stream = p.required_stream_name("logStreamName")?;
        let events = match p.list("logEvents")? {
            Some(list) => input_events(p, list)?,
            None => {
                p.missing("logEvents");
                Vec::new()
            }
        };
        p.token("sequenceToken")?;
        p.finish()?;
        Ok(Put {
            group,
            stream,
            events,
        })
    }
}

fn input_events<'a>(p: &mut Params<'a>, list: &'a [Value]) -> Result<Vec<Input<'a>>, Fault> {
    p.check_count("logEvents", list.len(), BATCH_MAX_EVENTS);
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let e = as_object(v)?;
        let at = |m: &str| format!("logEvents.{}.member.{m}", i + 1);
        let get = |k: &str| e.get(k).filter(|v| !v.is_null());
        let timestamp = get("timestamp").map(as_long).transpose()?;
        let message = get("message").map(as_str).transpose()?;
        match timestamp {
            None => p.missing(&at("timestamp")),
            Some(t) if t < 0 => p.violation(
                &at("timestamp"),
                &t.to_string(),
                "have value greater than or equal to 0",
            ),
            Some(_) => {}
        }
        match message {
            None => p.missing(&at("message")),
            Some("") => p.violation(&at("message"), "", "have length greater than or equal to 1"),
            Some(_) => {}
        }
        out.push(Input {
            timestamp: timestamp.unwrap_or(0),
            message: message.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// An event's place in a stream: its timestamp, then its arrival (line) number.
type Key = (i64, u64);

/// A GetLogEvents position: the gap before `Key`. Forward reads events at or after
/// it, backward reads events before it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cursor {
    Forward(Key),
    Backward(Key),
}

impl Cursor {
    fn token(self) -> String {
        let (d, (t, s)) = match self {
            Cursor::Forward(k) => ('f', k),
            Cursor::Backward(k) => ('b', k),
        };
        format!("{d}/{t:020}{s:020}/s")
    }

    fn parse(token: &str) -> Result<Cursor, Fault> {
        let parse = |body: &str| -> Option<Key> {
            let digits = body.strip_suffix("/s")?;
            if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits[..20].parse().ok()?, digits[20..].parse().ok()?))
        };
        if let Some(k) = token.strip_prefix("f/").and_then(parse) {
            Ok(Cursor::Forward(k))
        } else if let Some(k) = token.strip_prefix("b/").and_then(parse) {
            Ok(Cursor::Backward(k))
        } else {
            Err(Fault::bad_token())
        }
    }
}

struct Get<'a> {
    group: &'a str,
    stream: &'a str,
    /// Timestamps in [start, end).
    start: i64,
    end: Option<i64>,
    cursor: Option<Cursor>,
    limit: usize,
    from_head: bool,
}

impl<'a> Get<'a> {
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let selector = p.group_selector()?;
        let stream = p.required_stream_name("logStreamName")?;
        let start = p.timestamp("startTime")?;
        let end = p.timestamp("endTime")?;
        let token = p.token("nextToken")?;
        let limit = p.limit("limit", PAGE_MAX_EVENTS, PAGE_MAX_EVENTS)?;
        let from_head = p.flag("startFromHead")?.unwrap_or(false);
        p.finish()?;
        let group = selector.resolve()?;
        let cursor = token.map(Cursor::parse).transpose()?;
        Ok(Get {
            group,
            stream,
            start: start.unwrap_or(0),
            end,
            cursor,
            limit,
            from_head,
        })
    }
}

struct Filter<'a> {
    group: &'a str,
    streams: Option<Vec<&'a str>>,
    prefix: Option<&'a str>,
    /// Timestamps in [start, end], both ends included (unlike GetLogEvents).
    start: i64,
    end: i64,
    pattern: Pattern,
    after: Option<FilterMark>,
    forward: bool,
    limit: usize,
}

impl<'a> Filter<'a> {
    fn parse(p: &mut Params<'a>) -> Result<Self, Fault> {
        let selector = p.group_selector()?;
        let streams = p
            .list("logStreamNames")?
            .map(|l| names(p, "logStreamNames", l, 100, Params::check_stream_name))
            .transpose()?;
        let prefix = p.stream_name("logStreamNamePrefix")?;
        let start = p.timestamp("startTime")?;
        let end = p.timestamp("endTime")?;
        let pattern = p.string("filterPattern")?;
        if let Some(s) = pattern {
            p.check_length("filterPattern", s, 0, FILTER_PATTERN_MAX_CHARS);
        }
        let token = p.token("nextToken")?;
        let limit = p.limit("limit", PAGE_MAX_EVENTS, PAGE_MAX_EVENTS)?;
        let from_head = p.flag("startFromHead")?;
        p.finish()?;
        let group = selector.resolve()?;
        if streams.is_some() && prefix.is_some() {
            return Err(Fault::invalid(
                "logStreamNames and logStreamNamePrefix cannot both be specified",
            ));
        }
        if from_head == Some(false) && start.is_some_and(|s| s < NEWEST_FIRST_FROM_MS) {
            return Err(Fault::invalid(
                "startFromHead false requires a startTime on or after 2024-01-01T00:00:00Z",
            ));
        }
        let pattern = Pattern::parse(pattern.unwrap_or_default())?;
        let after = token.map(FilterMark::parse).transpose()?;
        // A token carries its direction; startFromHead only chooses the first page's.
        let forward = after
            .as_ref()
            .map_or(from_head.unwrap_or(true), |m| m.forward);
        Ok(Filter {
            group,
            streams,
            prefix,
            start: start.unwrap_or(0),
            end: end.unwrap_or(i64::MAX),
            pattern,
            after,
            forward,
            limit,
        })
    }

    fn selects(&self, stream: &str) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|names| names.contains(&stream))
            && self.prefix.is_none_or(|p| stream.starts_with(p))
    }

    /// The stream's events this request matches, past the token's mark.
    fn hits<'s>(&'s self, s: &'s Stream) -> impl Iterator<Item = Hit<'s>> + 's {
        let lo = s.events.partition_point(|e| e.timestamp < self.start);
        let hi = s
            .events
            .partition_point(|e| e.timestamp <= self.end)
            .max(lo);
        s.events[lo..hi]
            .iter()
            .map(move |event| Hit {
                stream: &s.name,
                event,
            })
            .filter(move |h| self.after.as_ref().is_none_or(|m| m.passed_by(h)))
            .filter(move |h| self.pattern.matches(&h.event.message))
    }
}

/// A FilterLogEvents event, in the order the service sorts them: timestamp,
/// ingestion time, then (ours) stream and arrival.
struct Hit<'s> {
    stream: &'s str,
    event: &'s Event,
}

type HitKey<'k> = (i64, i64, &'k str, u64);

impl Hit<'_> {
    fn key(&self) -> HitKey<'_> {
        let e = self.event;
        (e.timestamp, e.ingestion, self.stream, e.seq)
    }

    /// Unique within the group: timestamp, arrival and the stream's hash, in the
    /// service's 56-digit shape.
    fn event_id(&self) -> String {
        let h = fnv64(self.stream.as_bytes()) % 10_000_000_000_000_000;
        format!("{:020}{:020}{h:016}", self.event.timestamp, self.event.seq)
    }
}

/// Where a FilterLogEvents page ended, and in which direction it read.
#[derive(Debug, PartialEq)]
struct FilterMark {
    forward: bool,
    timestamp: i64,
    ingestion: i64,
    stream: String,
    seq: u64,
}

impl FilterMark {
    fn of(h: &Hit, forward: bool) -> Self {
        FilterMark {
            forward,
            timestamp: h.event.timestamp,
            ingestion: h.event.ingestion,
            stream: h.stream.to_string(),
            seq: h.event.seq,
        }
    }

    fn key(&self) -> HitKey<'_> {
        (self.timestamp, self.ingestion, &self.stream, self.seq)
    }

    fn passed_by(&self, h: &Hit) -> bool {
        if self.forward {
            h.key() > self.key()
        } else {
            h.key() < self.key()
        }
    }

    fn token(&self) -> String {
        let d = if self.forward { 'F' } else { 'B' };
        format!(
            "{d}/{}/{}/{}/{}",
            self.timestamp,
            self.ingestion,
            self.seq,
            hex(self.stream.as_bytes())
        )
    }

    fn parse(token: &str) -> Result<Self, Fault> {
        let parts: Vec<&str> = token.splitn(5, '/').collect();
        let mark = match parts.as_slice() {
            [d, t, i, s, name] if matches!(*d, "F" | "B") => Some(FilterMark {
                forward: *d == "F",
                timestamp: t.parse().map_err(|_| Fault::bad_token())?,
                ingestion: i.parse().map_err(|_| Fault::bad_token())?,
                seq: s.parse().map_err(|_| Fault::bad_token())?,
                stream: unhex_utf8(name).ok_or_else(Fault::bad_token)?,
            }),
            _ => None,
        };
        mark.ok_or_else(Fault::bad_token)
    }
}

// ---------------------------------------------------------------------------------
// Filter patterns: terms (all must appear), "quoted phrases" (must appear as is),
// ?alternatives (one of them must appear) and -exclusions (none may appear). Matching
// is case-sensitive, as the service's. JSON ({...}) and space-delimited ([...])
// patterns are refused rather than silently matching nothing.

#[derive(Debug, Default, PartialEq)]
struct Pattern {
    all: Vec<String>,
    any: Vec<String>,
    none: Vec<String>,
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, Fault> {
        let mut p = Pattern::default();
        let mut rest = s.trim_start();
        if rest.starts_with(['{', '[']) {
            return Err(Fault::invalid(
                "Invalid filter pattern: this local store supports terms, \"quoted phrases\", ?alternatives and -exclusions, not JSON or space-delimited patterns",
            ));
        }
        while !rest.is_empty() {
            let (list, body) = if let Some(b) = rest.strip_prefix('?').filter(starts_term) {
                (&mut p.any, b)
            } else if let Some(b) = rest.strip_prefix('-').filter(starts_term) {
                (&mut p.none, b)
            } else {
                (&mut p.all, rest)
            };
            let (term, after) = match body.strip_prefix('"') {
                Some(q) => quoted(q)?,
                None => bare(body),
            };
            list.push(term);
            rest = after.trim_start();
        }
        Ok(p)
    }

    fn matches(&self, message: &str) -> bool {
        self.all.iter().all(|t| message.contains(t.as_str()))
            && !self.none.iter().any(|t| message.contains(t.as_str()))
            && (self.any.is_empty() || self.any.iter().any(|t| message.contains(t.as_str())))
    }
}

fn starts_term(s: &&str) -> bool {
    s.chars().next().is_some_and(|c| !c.is_whitespace())
}

/// A phrase after its opening quote, up to the closing one (`\"` and `\\` escape).
fn quoted(s: &str) -> Result<(String, &str), Fault> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(Fault::invalid(
        "Invalid filter pattern: a quoted phrase is not closed",
    ))
}

fn bare(s: &str) -> (String, &str) {
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (s[..end].to_string(), &s[end..])
}

// ---------------------------------------------------------------------------------
// PutLogEvents' batch rules

/// What a valid batch keeps: `accepted` (a range, since the batch is in order),
/// and the indices the service reports as rejected.
#[derive(Debug, PartialEq)]
struct Admitted {
    accepted: Range<usize>,
    too_old_end: Option<usize>,
    too_new_start: Option<usize>,
}

impl Admitted {
    fn rejected_info(&self) -> Option<Value> {
        let mut info = Map::new();
        if let Some(i) = self.too_new_start {
            info.insert("tooNewLogEventStartIndex".into(), i.into());
        }
        if let Some(i) = self.too_old_end {
            info.insert("tooOldLogEventEndIndex".into(), i.into());
        }
        (!info.is_empty()).then_some(Value::Object(info))
    }
}

fn admit(events: &[Input], now: i64) -> Result<Admitted, Fault> {
    let size: usize = events
        .iter()
        .map(|e| e.message.len() + EVENT_OVERHEAD_BYTES)
        .sum();
    if size > BATCH_MAX_BYTES {
        return Err(Fault::invalid(format!(
            "Upload too large: {size} bytes exceeds limit of {BATCH_MAX_BYTES}"
        )));
    }
    if events.windows(2).any(|w| w[1].timestamp < w[0].timestamp) {
        return Err(Fault::invalid(
            "Log events in a single PutLogEvents request must be in chronological order.",
        ));
    }
    // In order, so too-old events are a prefix and too-new ones a suffix.
    let old = events.partition_point(|e| e.timestamp < now.saturating_sub(TOO_OLD_MS));
    let new = events
        .partition_point(|e| e.timestamp <= now.saturating_add(TOO_NEW_MS))
        .max(old);
    // The 24-hour span counts only the events that are kept.
    if let (Some(first), Some(last)) = (events[old..new].first(), events[old..new].last()) {
        if last.timestamp - first.timestamp > BATCH_MAX_SPAN_MS {
            return Err(Fault::invalid(
                "The batch of log events in a single PutLogEvents request cannot span more than 24 hours.",
            ));
        }
    }
    Ok(Admitted {
        accepted: old..new,
        too_old_end: old.checked_sub(1),
        too_new_start: (new < events.len()).then_some(new),
    })
}

/// The deprecated token the service still returns; ours counts the stream's events.
fn sequence_token(next_seq: u64) -> String {
    format!("{next_seq:056}")
}

// ---------------------------------------------------------------------------------
// Pages

/// How many of the events (by message length, in reading order) a page holds: up to
/// `limit` and 1 MB counted as PutLogEvents counts, but at least one, so that
/// paging always moves.
fn fit(lengths: impl Iterator<Item = usize>, limit: usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for len in lengths.take(limit) {
        bytes += len + EVENT_OVERHEAD_BYTES;
        if n > 0 && bytes > PAGE_MAX_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// A GetLogEvents page: the events' range, and where the next pages start.
#[derive(Debug, PartialEq)]
struct Page {
    range: Range<usize>,
    forward: Key,
    backward: Key,
}

/// The page that starts at `from`, within `..hi`.
fn ahead(events: &[Event], from: usize, hi: usize, limit: usize) -> Range<usize> {
    from..from + fit(events[from..hi].iter().map(Event::len), limit)
}

/// The page that ends at `to`, within `lo..`.
fn behind(events: &[Event], lo: usize, to: usize, limit: usize) -> Range<usize> {
    to - fit(events[lo..to].iter().rev().map(Event::len), limit)..to
}

fn locate(events: &[Event], key: Key) -> usize {
    events.partition_point(|e| e.key() < key)
}

fn get_page(events: &[Event], r: &Get) -> Page {
    let lo = locate(events, (r.start, 0));
    let hi = r
        .end
        .map_or(events.len(), |t| locate(events, (t, 0)))
        .max(lo);
    let range = match r.cursor {
        Some(Cursor::Forward(k)) => ahead(events, locate(events, k).clamp(lo, hi), hi, r.limit),
        Some(Cursor::Backward(k)) => behind(events, lo, locate(events, k).clamp(lo, hi), r.limit),
        None if r.from_head => ahead(events, lo, hi, r.limit),
        None => behind(events, lo, hi, r.limit),
    };
    match (events[range.clone()].first(), events[range.clone()].last()) {
        (Some(first), Some(last)) => Page {
            forward: (last.timestamp, last.seq.saturating_add(1)),
            backward: first.key(),
            range,
        },
        // Nothing here: both tokens stay where the reader is, so a reader at the end
        // gets back the token it sent.
        _ => {
            let at = match r.cursor {
                Some(Cursor::Forward(k)) | Some(Cursor::Backward(k)) => k,
                None => (r.start, 0),
            };
            Page {
                range,
                forward: at,
                backward: at,
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The store in memory

struct Event {
    timestamp: i64,
    ingestion: i64,
    /// The event's line in its stream's file: its arrival order, stable across reopening.
    seq: u64,
    message: Box<str>,
}

impl Event {
    fn key(&self) -> Key {
        (self.timestamp, self.seq)
    }

    fn len(&self) -> usize {
        self.message.len()
    }

    fn output(&self) -> Value {
        json!({"timestamp": self.timestamp, "message": &*self.message, "ingestionTime": self.ingestion})
    }
}

struct Stream {
    name: String,
    stem: String,
    created: i64,
    /// Sorted by key (timestamp, then arrival).
    events: Vec<Event>,
    next_seq: u64,
    stored_bytes: u64,
    last_ingestion: Option<i64>,
}

impl Stream {
    fn absorb(&mut self, new: Vec<Event>) {
        for e in &new {
            self.stored_bytes += e.message.len() as u64;
            self.last_ingestion = self.last_ingestion.max(Some(e.ingestion));
        }
        self.next_seq += new.len() as u64;
        let in_order = match (self.events.last(), new.first()) {
            (Some(last), Some(first)) => last.key() <= first.key(),
            _ => true,
        };
        self.events.extend(new);
        // Another writer's batch may be older: two sorted runs, which the standard
        // sort merges in linear time.
        if !in_order {
            self.events.sort_by_key(Event::key);
        }
    }

    fn describe(&self) -> Value {
        let mut out = json!({
            "logStreamName": self.name,
            "creationTime": self.created,
            "uploadSequenceToken": sequence_token(self.next_seq),
            "storedBytes": 0,
        });
        if let (Some(first), Some(last)) = (self.events.first(), self.events.last()) {
            out["firstEventTimestamp"] = first.timestamp.into();
            out["lastEventTimestamp"] = last.timestamp.into();
        }
        if let Some(t) = self.last_ingestion {
            out["lastIngestionTime"] = t.into();
        }
        out
    }
}

struct Group {
    name: String,
    stem: String,
    created: i64,
    streams: BTreeMap<String, Stream>,
}

impl Group {
    fn describe(&self, short: bool) -> Value {
        if short {
            // With logGroupNamePattern the service answers only these.
            return json!({"logGroupName": self.name, "creationTime": self.created});
        }
        let stored: u64 = self.streams.values().map(|s| s.stored_bytes).sum();
        json!({
            "logGroupName": self.name,
            "creationTime": self.created,
            "metricFilterCount": 0,
            "storedBytes": stored,
            "logGroupClass": "STANDARD",
        })
    }
}

struct State {
    root: PathBuf,
    groups: BTreeMap<String, Group>,
}

impl State {
    fn stream(&self, group: &str, stream: &str) -> Result<&Stream, Fault> {
        self.groups
            .get(group)
            .ok_or_else(Fault::no_group)?
            .streams
            .get(stream)
            .ok_or_else(Fault::no_stream)
    }

    fn create_group(&mut self, r: NewGroup, now: i64) -> Result<Value, Fault> {
        if self.groups.contains_key(r.group) {
            return Err(Fault::new(
                "ResourceAlreadyExistsException",
                "The specified log group already exists",
            ));
        }
        if r.group.starts_with("aws/") {
            return Err(Fault::invalid("Log group names can't start with aws/"));
        }
        let root = &self.root;
        let stem = disk::free_stem(r.group, |s| {
            root.join(s).exists() || root.join(format!(".tmp-{s}")).exists()
        });
        disk::create_group(root, &stem, r.group, now).map_err(Fault::storage)?;
        self.groups.insert(
            r.group.to_string(),
            Group {
                name: r.group.to_string(),
                stem,
                created: now,
                streams: BTreeMap::new(),
            },
        );
        Ok(json!({}))
    }

    fn create_stream(&mut self, r: NewStream, now: i64) -> Result<Value, Fault> {
        let group = self.groups.get_mut(r.group).ok_or_else(Fault::no_group)?;
        if group.streams.contains_key(r.stream) {
            return Err(Fault::new(
                "ResourceAlreadyExistsException",
                "The specified log stream already exists",
            ));
        }
        let dir = self.root.join(&group.stem);
        let stem = disk::free_stem(r.stream, |s| {
            disk::meta_path(&dir, s).exists() || disk::events_path(&dir, s).exists()
        });
        disk::write_meta(
            &disk::meta_path(&dir, &stem),
            "logStreamName",
            r.stream,
            now,
        )
        .map_err(Fault::storage)?;
        group.streams.insert(
            r.stream.to_string(),
            Stream {
                name: r.stream.to_string(),
                stem,
                created: now,
                events: Vec::new(),
                next_seq: 0,
                stored_bytes: 0,
                last_ingestion: None,
            },
        );
        Ok(json!({}))
    }

    fn describe_groups(&self, q: &GroupQuery) -> Value {
        let lower = q.after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self
            .groups
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, g)| g)
            .filter(|g| q.admits(&g.name));
        let page: Vec<&Group> = matching.by_ref().take(q.limit).collect();
        let mut out = json!({
            "logGroups": page.iter().map(|g| g.describe(q.pattern.is_some())).collect::<Vec<_>>()
        });
        if let (Some(last), Some(_)) = (page.last(), matching.next()) {
            out["nextToken"] = format!("g/{}", hex(last.name.as_bytes())).into();
        }
        out
    }

    fn describe_streams(&self, q: &StreamQuery) -> Result<Value, Fault> {
        let group = self.groups.get(q.group).ok_or_else(Fault::no_group)?;
        let mut rows: Vec<(StreamKey, &Stream)> = group
            .streams
            .values()
            .filter(|s| q.prefix.is_none_or(|p| s.name.starts_with(p)))
            .map(|s| (q.key_of(s), s))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        if q.descending {
            rows.reverse();
        }
        let start = q.after.as_ref().map_or(0, |mark| {
            rows.iter()
                .position(|(k, _)| q.follows(k, mark))
                .unwrap_or(rows.len())
        });
        let page = &rows[start..(start + q.limit).min(rows.len())];
        let mut out = json!({
            "logStreams": page.iter().map(|(_, s)| s.describe()).collect::<Vec<_>>()
        });
        if let Some(((t, name), _)) = page.last().filter(|_| start + page.len() < rows.len()) {
            out["nextToken"] = format!("s/{t}/{}", hex(name.as_bytes())).into();
        }
        Ok(out)
    }

    fn put(&mut self, r: &Put, now: i64) -> Result<Value, Fault> {
        let admitted = admit(&r.events, now)?;
        let group = self.groups.get_mut(r.group).ok_or_else(Fault::no_group)?;
        let stream = group
            .streams
            .get_mut(r.stream)
            .ok_or_else(Fault::no_stream)?;
        let new: Vec<Event> = r.events[admitted.accepted.clone()]
            .iter()
            .zip(stream.next_seq..)
            .map(|(e, seq)| Event {
                timestamp: e.timestamp,
                ingestion: now,
                seq,
                message: e.message.into(),
            })
            .collect();
        if !new.is_empty() {
            let path = disk::events_path(&self.root.join(&group.stem), &stream.stem);
            disk::append(&path, &disk::encode(&new)).map_err(Fault::storage)?;
            stream.absorb(new);
        }
        let mut out = json!({"nextSequenceToken": sequence_token(stream.next_seq)});
        if let Some(info) = admitted.rejected_info() {
            out["rejectedLogEventsInfo"] = info;
        }
        Ok(out)
    }

    fn get(&self, r: &Get) -> Result<Value, Fault> {
        let stream = self.stream(r.group, r.stream)?;
        let page = get_page(&stream.events, r);
        let events: Vec<Value> = stream.events[page.range]
            .iter()
            .map(Event::output)
            .collect();
        Ok(json!({
            "events": events,
            "nextForwardToken": Cursor::Forward(page.forward).token(),
            "nextBackwardToken": Cursor::Backward(page.backward).token(),
        }))
    }

    fn filter(&self, r: &Filter) -> Result<Value, Fault> {
        let group = self.groups.get(r.group).ok_or_else(Fault::no_group)?;
        let mut hits: Vec<Hit> = group
            .streams
            .values()
            .filter(|s| r.selects(&s.name))
            .flat_map(|s| r.hits(s))
            .collect();
        hits.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
        if !r.forward {
            hits.reverse();
        }
        let n = fit(hits.iter().map(|h| h.event.len()), r.limit);
        let events: Vec<Value> = hits[..n]
            .iter()
            .map(|h| {
                json!({
                    "logStreamName": h.stream,
                    "timestamp": h.event.timestamp,
                    "message": &*h.event.message,
                    "ingestionTime": h.event.ingestion,
                    "eventId": h.event_id(),
                })
            })
            .collect();
        // The model: searchedLogStreams is no longer supported and is an empty list.
        let mut out = json!({"events": events, "searchedLogStreams": []});
        if let Some(last) = hits[..n].last().filter(|_| n < hits.len()) {
            out["nextToken"] = FilterMark::of(last, r.forward).token().into();
        }
        Ok(out)
    }

    fn delete_group(&mut self, r: NewGroup) -> Result<Value, Fault> {
        let group = self.groups.get(r.group).ok_or_else(Fault::no_group)?;
        disk::remove_group(&self.root, &group.stem).map_err(Fault::storage)?;
        self.groups.remove(r.group);
        Ok(json!({}))
    }

    fn delete_stream(&mut self, r: NewStream) -> Result<Value, Fault> {
        let group = self.groups.get_mut(r.group).ok_or_else(Fault::no_group)?;
        let stream = group.streams.get(r.stream).ok_or_else(Fault::no_stream)?;
        disk::remove_stream(&self.root.join(&group.stem), &stream.stem).map_err(Fault::storage)?;
        group.streams.remove(r.stream);
        Ok(json!({}))
    }
}

fn parse_name_token(token: &str, prefix: &str) -> Result<String, Fault> {
    token
        .strip_prefix(prefix)
        .and_then(unhex_utf8)
        .ok_or_else(Fault::bad_token)
}

fn parse_stream_token(token: &str) -> Result<StreamKey, Fault> {
    let (t, name) = token
        .strip_prefix("s/")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(Fault::bad_token)?;
    let t = t.parse().map_err(|_| Fault::bad_token())?;
    Ok((t, unhex_utf8(name).ok_or_else(Fault::bad_token)?))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex_utf8(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------
// The store on disk. Commit points: a group exists once its directory (made under a
// temporary name, with its metadata inside) is renamed into place, and is gone once
// renamed away; a stream exists while its metadata file does. Leftovers of a crash
// between steps are swept at the next open.

mod disk {
    use super::{fnv64, hex, Event, Group, Stream, GROUP_META, HEX_STEM_MAX_BYTES};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::fs::{self, OpenOptions};
    use std::io::{self, ErrorKind, Write};
    use std::path::{Path, PathBuf};

    const TMP_PREFIX: &str = ".tmp-";
    const TRASH_PREFIX: &str = ".trash-";

    pub fn meta_path(dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}.json"))
    }

    pub fn events_path(dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}.jsonl"))
    }

    /// A file-name stem for `name` that `taken` does not refuse.
    pub fn free_stem(name: &str, taken: impl Fn(&str) -> bool) -> String {
        let base = if !name.is_empty() && name.len() <= HEX_STEM_MAX_BYTES {
            hex(name.as_bytes())
        } else {
            format!("~{:016x}", fnv64(name.as_bytes()))
        };
        if !taken(&base) {
            return base;
        }
        let mut n = 1u64;
        loop {
            let s = format!("{base}-{n}");
            if !taken(&s) {
                return s;
            }
            n += 1;
        }
    }

    fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
        match r {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    pub fn write_meta(path: &Path, key: &str, name: &str, created: i64) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let body = serde_json::json!({key: name, "creationTime": created}).to_string();
        fs::write(&tmp, body)?;
        fs::rename(&tmp, path)
    }

    fn read_meta(path: &Path, key: &str) -> io::Result<Option<(String, i64)>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(None);
        };
        Ok(v.get(key)
            .and_then(Value::as_str)
            .zip(v.get("creationTime").and_then(Value::as_i64))
            .map(|(n, t)| (n.to_string(), t)))
    }

    pub fn create_group(root: &Path, stem: &str, name: &str, created: i64) -> io::Result<()> {
        let tmp = root.join(format!("{TMP_PREFIX}{stem}"));
        ignore_missing(fs::remove_dir_all(&tmp))?;
        fs::create_dir(&tmp)?;
        let made = write_meta(&tmp.join(GROUP_META), "logGroupName", name, created)
            .and_then(|()| fs::rename(&tmp, root.join(stem)));
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made
    }

    pub fn remove_group(root: &Path, stem: &str) -> io::Result<()> {
        let trash = root.join(format!("{TRASH_PREFIX}{stem}"));
        ignore_missing(fs::remove_dir_all(&trash))?;
        fs::rename(root.join(stem), &trash)?;
        // Renamed away, the group is gone; what a failure here leaves is swept at open.
        let _ = fs::remove_dir_all(&trash);
        Ok(())
    }

    pub fn remove_stream(dir: &Path, stem: &str) -> io::Result<()> {
        fs::remove_file(meta_path(dir, stem))?;
        // Without its metadata the stream is gone; an events file left behind is an
        // orphan, swept at open and never reused (see `free_stem`'s callers).
        let _ = fs::remove_file(events_path(dir, stem));
        Ok(())
    }

    /// The events as lines of their file.
    pub fn encode(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::with_capacity(events.iter().map(|e| e.message.len() + 64).sum());
        for e in events {
            let line = serde_json::json!({
                "timestamp": e.timestamp,
                "message": &*e.message,
                "ingestionTime": e.ingestion,
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// One write of whole lines; on failure the file is cut back, so that no partial
    /// line is left for the next append to be glued to.
    pub fn append(path: &Path, lines: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        let before = f.metadata()?.len();
        let written = f.write_all(lines);
        if written.is_err() {
            let _ = f.set_len(before);
        }
        written
    }

    pub fn load(root: &Path) -> io::Result<BTreeMap<String, Group>> {
        fs::create_dir_all(root)?;
        let mut groups = BTreeMap::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let file = entry.file_name();
            let Some(stem) = file.to_str() else {
                continue;
            };
            if stem.starts_with(TMP_PREFIX) || stem.starts_with(TRASH_PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
                continue;
            }
            if stem.starts_with('.') || !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(group) = load_group(&entry.path(), stem)? {
                groups.entry(group.name.clone()).or_insert(group);
            }
        }
        Ok(groups)
    }

    fn load_group(dir: &Path, stem: &str) -> io::Result<Option<Group>> {
        let Some((name, created)) = read_meta(&dir.join(GROUP_META), "logGroupName")? else {
            return Ok(None);
        };
        let mut streams = BTreeMap::new();
        let mut sweep = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else {
                continue;
            };
            if file == GROUP_META {
                continue;
            }
            if file.ends_with(".tmp") {
                sweep.push(entry.path());
            } else if let Some(s) = file.strip_suffix(".jsonl") {
                if !meta_path(dir, s).exists() {
                    sweep.push(entry.path());
                }
            } else if let Some(s) = file.strip_suffix(".json") {
                if let Some(stream) = load_stream(dir, s)? {
                    streams.entry(stream.name.clone()).or_insert(stream);
                }
            }
        }
        for path in sweep {
            let _ = fs::remove_file(path);
        }
        Ok(Some(Group {
            name,
            stem: stem.to_string(),
            created,
            streams,
        }))
    }

    fn load_stream(dir: &Path, stem: &str) -> io::Result<Option<Stream>> {
        let Some((name, created)) = read_meta(&meta_path(dir, stem), "logStreamName")? else {
            return Ok(None);
        };
        let (events, next_seq) = read_events(&events_path(dir, stem))?;
        let mut stream = Stream {
            name,
            stem: stem.to_string(),
            created,
            events: Vec::new(),
            next_seq: 0,
            stored_bytes: 0,
            last_ingestion: None,
        };
        stream.absorb(events);
        stream.next_seq = next_seq;
        Ok(Some(stream))
    }

    /// A stream's events, sorted, and the number its next line will have.
    fn read_events(path: &Path) -> io::Result<(Vec<Event>, u64)> {
        let mut bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            // A crash mid-append left part of a line: cut it, or the next append
            // would be glued to it.
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(whole as u64)?;
            bytes.truncate(whole);
        }
        let mut events = Vec::new();
        let mut seq = 0u64;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            // A line that does not parse still keeps its number, so the others keep theirs.
            if let Some(e) = decode(line, seq) {
                events.push(e);
            }
            seq += 1;
        }
        events.sort_by_key(Event::key);
        Ok((events, seq))
    }

    fn decode(line: &[u8], seq: u64) -> Option<Event> {
        let v: Value = serde_json::from_slice(line).ok()?;
        Some(Event {
            timestamp: v.get("timestamp")?.as_i64()?,
            ingestion: v.get("ingestionTime")?.as_i64()?,
            seq,
            message: v.get("message")?.as_str()?.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const NOW: i64 = 1_750_000_000_000;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "logs-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fresh() -> (TempDir, LogStore) {
        let d = TempDir::new();
        let s = LogStore::open(&d.0).expect("open");
        (d, s)
    }

    fn call(s: &LogStore, op: &str, body: Value) -> LogsReply {
        s.handle(op, body.to_string().as_bytes(), NOW)
    }

    fn ok(s: &LogStore, op: &str, body: Value) -> Value {
        let r = call(s, op, body);
        assert_eq!(r.status, 200, "{op}: {}", r.body);
        r.body
    }

    /// The error's __type (asserting status 400) and message.
    fn fail(s: &LogStore, op: &str, body: Value) -> (String, String) {
        let r = call(s, op, body);
        assert_eq!(r.status, 400, "{op}: {}", r.body);
        assert_eq!(r.body.as_object().map(|o| o.len()), Some(2), "{}", r.body);
        (
            r.body["__type"].as_str().expect("__type").to_string(),
            r.body["message"].as_str().expect("message").to_string(),
        )
    }

    fn kind(s: &LogStore, op: &str, body: Value) -> String {
        fail(s, op, body).0
    }

    fn setup(s: &LogStore, group: &str, stream: &str) {
        let r = call(s, "CreateLogGroup", json!({"logGroupName": group}));
        assert!(
            r.status == 200 || r.body["__type"] == "ResourceAlreadyExistsException",
            "{}",
            r.body
        );
        ok(
            s,
            "CreateLogStream",
            json!({"logGroupName": group, "logStreamName": stream}),
        );
    }

    fn put(s: &LogStore, group: &str, stream: &str, events: &[(i64, &str)]) -> Value {
        let events: Vec<Value> = events
            .iter()
            .map(|(t, m)| json!({"timestamp": t, "message": m}))
            .collect();
        ok(
            s,
            "PutLogEvents",
            json!({"logGroupName": group, "logStreamName": stream, "logEvents": events}),
        )
    }

    fn messages(events: &Value) -> Vec<String> {
        events
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["message"].as_str().expect("message").to_string())
            .collect()
    }

    fn get(s: &LogStore, extra: Value) -> Value {
        let mut body = json!({"logGroupName": "g", "logStreamName": "s"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        ok(s, "GetLogEvents", body)
    }

    /// Stream "s" of group "g" with events m0..m4 at NOW-5000..NOW-1000.
    fn five() -> (TempDir, LogStore) {
        let (d, s) = fresh();
        setup(&s, "g", "s");
        let ev: Vec<(i64, String)> = (0..5)
            .map(|i| (NOW - 5000 + i * 1000, format!("m{i}")))
            .collect();
        let ev: Vec<(i64, &str)> = ev.iter().map(|(t, m)| (*t, m.as_str())).collect();
        put(&s, "g", "s", &ev);
        (d, s)
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LogStore>();
    }

    #[test]
    fn put_then_get_is_byte_exact() {
        let (d, s) = fresh();
        setup(&s, "g", "s");
        let msgs = [
            "plain",
            "héllo wörld ✓ 日本語 🚀",
            "two\nlines\r\nand\ttab",
            "quote \" backslash \\ nul \u{0} sep \u{2028} end",
            " leading and trailing spaces ",
        ];
        let ev: Vec<(i64, &str)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (NOW - 10 + i as i64, *m))
            .collect();
        let out = put(&s, "g", "s", &ev);
        assert_eq!(out, json!({"nextSequenceToken": format!("{:056}", 5)}));
        let got = get(&s, json!({"startFromHead": true}));
        let events = got["events"].as_array().expect("events");
        assert_eq!(events.len(), 5);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e,
                &json!({"timestamp": NOW - 10 + i as i64, "message": msgs[i], "ingestionTime": NOW})
            );
        }
        // Each event is one line of its file, whatever its message holds.
        let dir = d.0.join(hex(b"g"));
        let file = std::fs::read(disk::events_path(&dir, &hex(b"s"))).expect("events file");
        assert_eq!(file.iter().filter(|b| **b == b'\n').count(), 5);
        assert_eq!(file.last(), Some(&b'\n'));
    }

    #[test]
    fn default_read_returns_the_newest_events() {
        let (_d, s) = five();
        let got = get(&s, json!({"limit": 2}));
        assert_eq!(messages(&got["events"]), ["m3", "m4"]);
        let all = get(&s, json!({}));
        assert_eq!(messages(&all["events"]), ["m0", "m1", "m2", "m3", "m4"]);
        let head = get(&s, json!({"limit": 2, "startFromHead": true}));
        assert_eq!(messages(&head["events"]), ["m0", "m1"]);
    }

    #[test]
    fn forward_paging_with_limit_one_ends_on_the_same_token() {
        let (_d, s) = five();
        let mut seen = Vec::new();
        let mut page = get(&s, json!({"limit": 1, "startFromHead": true}));
        let mut calls = 1;
        loop {
            seen.extend(messages(&page["events"]));
            let token = page["nextForwardToken"].clone();
            let next = get(
                &s,
                json!({"limit": 1, "startFromHead": true, "nextToken": token}),
            );
            calls += 1;
            if next["nextForwardToken"] == token {
                assert_eq!(next["events"], json!([]));
                break;
            }
            assert!(calls < 20, "paging does not end");
            page = next;
        }
        assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
        assert_eq!(calls, 6);
    }

    #[test]
    fn backward_paging_with_limit_one_ends_on_the_same_token() {
        let (_d, s) = five();
        let mut seen = Vec::new();
        let mut page = get(&s, json!({"limit": 1}));
        loop {
            seen.extend(messages(&page["events"]));
            let token = page["nextBackwardToken"].clone();
            let next = get(&s, json!({"limit": 1, "nextToken": token}));
            if next["nextBackwardToken"] == token {
                assert_eq!(next["events"], json!([]));
                break;
            }
            assert!(seen.len() < 10, "paging does not end");
            page = next;
        }
        assert_eq!(seen, ["m4", "m3", "m2", "m1", "m0"]);
    }

    #[test]
    fn a_forward_token_at_the_end_picks_up_new_events() {
        let (_d, s) = five();
        let tail = get(&s, json!({}));
        let token = tail["nextForwardToken"].clone();
        let empty = get(&s, json!({"nextToken": token}));
        assert_eq!(empty["events"], json!([]));
        assert_eq!(empty["nextForwardToken"], token);
        put(&s, "g", "s", &[(NOW, "m5")]);
        let more = get(&s, json!({"nextToken": token}));
        assert_eq!(messages(&more["events"]), ["m5"]);
        // A backward token from a forward page reads what came before it.
        let back = get(
            &s,
            json!({"nextToken": more["nextBackwardToken"], "limit": 2}),
        );
        assert_eq!(messages(&back["events"]), ["m3", "m4"]);
    }

    #[test]
    fn time_range_includes_start_and_excludes_end() {
        let (_d, s) = five();
        let got = get(
            &s,
            json!({"startTime": NOW - 4000, "endTime": NOW - 2000, "startFromHead": true}),
        );
        assert_eq!(messages(&got["events"]), ["m1", "m2"]);
        let got = get(&s, json!({"startTime": NOW - 4000, "endTime": NOW - 2000}));
        assert_eq!(messages(&got["events"]), ["m1", "m2"]);
        let none = get(&s, json!({"startTime": NOW}));
        assert_eq!(none["events"], json!([]));
    }

    #[test]
    fn an_empty_stream_answers_tokens_that_repeat() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let got = get(&s, json!({}));
        let f = format!("f/{:020}{:020}/s", 0, 0);
        let b = format!("b/{:020}{:020}/s", 0, 0);
        assert_eq!(
            got,
            json!({"events": [], "nextForwardToken": f, "nextBackwardToken": b})
        );
        let again = get(&s, json!({"nextToken": f}));
        assert_eq!(again["nextForwardToken"], json!(f));
    }

    #[test]
    fn pages_stop_at_one_megabyte() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let big = "x".repeat(600_000);
        put(&s, "g", "s", &[(NOW, &big)]);
        put(&s, "g", "s", &[(NOW + 1, &big)]);
        let first = get(&s, json!({"startFromHead": true}));
        assert_eq!(first["events"].as_array().map(Vec::len), Some(1));
        assert_eq!(first["events"][0]["timestamp"], json!(NOW));
        let second = get(&s, json!({"nextToken": first["nextForwardToken"]}));
        assert_eq!(second["events"][0]["timestamp"], json!(NOW + 1));
    }

    #[test]
    fn bad_tokens_are_invalid_parameters() {
        let (_d, s) = five();
        for t in ["x", "f/12/s", "b/abc", "g/00"] {
            assert_eq!(
                fail(
                    &s,
                    "GetLogEvents",
                    json!({"logGroupName": "g", "logStreamName": "s", "nextToken": t})
                ),
                (
                    "InvalidParameterException".into(),
                    "The specified nextToken is invalid.".into()
                )
            );
        }
    }

    #[test]
    fn batch_limits() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let body = |events: Vec<Value>| json!({"logGroupName": "g", "logStreamName": "s", "logEvents": events});
        let empty = fail(&s, "PutLogEvents", body(vec![]));
        assert_eq!(
            empty,
            ("InvalidParameterException".into(), "1 validation error detected: Value '[]' at 'logEvents' failed to satisfy constraint: Member must have length greater than or equal to 1".into())
        );
        let many: Vec<Value> = (0..10_001)
            .map(|_| json!({"timestamp": NOW, "message": "m"}))
            .collect();
        assert_eq!(
            kind(&s, "PutLogEvents", body(many)),
            "InvalidParameterException"
        );
        let most: Vec<Value> = (0..10_000)
            .map(|_| json!({"timestamp": NOW, "message": "m"}))
            .collect();
        ok(&s, "PutLogEvents", body(most));
        // 1,048,576 bytes counting 26 per event is allowed; one byte more is not.
        let half = 1_048_576 / 2 - 26;
        let exact = vec![
            json!({"timestamp": NOW, "message": "a".repeat(half)}),
            json!({"timestamp": NOW, "message": "b".repeat(half)}),
        ];
        ok(&s, "PutLogEvents", body(exact));
        let over = vec![
            json!({"timestamp": NOW, "message": "a".repeat(half)}),
            json!({"timestamp": NOW, "message": "b".repeat(half + 1)}),
        ];
        assert_eq!(
            fail(&s, "PutLogEvents", body(over)),
            (
                "InvalidParameterException".into(),
                "Upload too large: 1048577 bytes exceeds limit of 1048576".into()
            )
        );
        // Multi-byte characters count as their UTF-8 bytes.
        let wide = vec![json!({"timestamp": NOW, "message": "é".repeat(524_276)})];
        assert_eq!(
            kind(&s, "PutLogEvents", body(wide)),
            "InvalidParameterException"
        );
        let stored = get(&s, json!({"limit": 1}));
        assert_eq!(
            stored["events"][0]["message"].as_str().map(str::len),
            Some(half)
        );
    }

    #[test]
    fn out_of_order_batches_are_refused_whole() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let r = fail(
            &s,
            "PutLogEvents",
            json!({"logGroupName": "g", "logStreamName": "s", "logEvents": [
                {"timestamp": NOW, "message": "a"}, {"timestamp": NOW - 1, "message": "b"}]}),
        );
        assert_eq!(
            r,
            (
                "InvalidParameterException".into(),
                "Log events in a single PutLogEvents request must be in chronological order."
                    .into()
            )
        );
        assert_eq!(get(&s, json!({}))["events"], json!([]));
        // Equal timestamps are in order.
        put(&s, "g", "s", &[(NOW, "a"), (NOW, "b")]);
        assert_eq!(messages(&get(&s, json!({}))["events"]), ["a", "b"]);
    }

    #[test]
    fn a_batch_spans_at_most_a_day_of_kept_events() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let day = 24 * HOUR_MS;
        let r = fail(
            &s,
            "PutLogEvents",
            json!({"logGroupName": "g", "logStreamName": "s", "logEvents": [
                {"timestamp": NOW - day - 1, "message": "a"}, {"timestamp": NOW, "message": "b"}]}),
        );
        assert_eq!(
            r,
            ("InvalidParameterException".into(), "The batch of log events in a single PutLogEvents request cannot span more than 24 hours.".into())
        );
        put(&s, "g", "s", &[(NOW - day, "a"), (NOW, "b")]);
        // A rejected (too old) event does not count toward the span.
        let out = put(
            &s,
            "g",
            "s",
            &[(NOW - 20 * day, "old"), (NOW - day + 5, "c")],
        );
        assert_eq!(
            out["rejectedLogEventsInfo"],
            json!({"tooOldLogEventEndIndex": 0})
        );
    }

    #[test]
    fn too_old_and_too_new_events_are_reported_by_index() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let out = put(
            &s,
            "g",
            "s",
            &[
                (NOW - TOO_OLD_MS - 1000, "old0"),
                (NOW - TOO_OLD_MS - 1, "old1"),
                (NOW - 20 * HOUR_MS, "kept0"),
                (NOW - 1, "kept1"),
                (NOW + TOO_NEW_MS, "kept2"),
                (NOW + TOO_NEW_MS + 1, "new0"),
            ],
        );
        assert_eq!(
            out,
            json!({
                "nextSequenceToken": format!("{:056}", 3),
                "rejectedLogEventsInfo": {"tooOldLogEventEndIndex": 1, "tooNewLogEventStartIndex": 5}
            })
        );
        let got = get(&s, json!({"startFromHead": true}));
        assert_eq!(messages(&got["events"]), ["kept0", "kept1", "kept2"]);
        // Exactly 14 days old is still kept.
        let edge = put(&s, "g", "s", &[(NOW - TOO_OLD_MS, "edge")]);
        assert_eq!(edge.get("rejectedLogEventsInfo"), None);
        let all_old = put(&s, "g", "s", &[(NOW - TOO_OLD_MS - 1, "x")]);
        assert_eq!(
            all_old["rejectedLogEventsInfo"],
            json!({"tooOldLogEventEndIndex": 0})
        );
        assert_eq!(all_old["nextSequenceToken"], json!(format!("{:056}", 4)));
    }

    #[test]
    fn unknown_groups_and_streams_are_not_found() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let group = (
            "ResourceNotFoundException".to_string(),
            "The specified log group does not exist.".to_string(),
        );
        let stream = (
            "ResourceNotFoundException".to_string(),
            "The specified log stream does not exist.".to_string(),
        );
        let ev = json!([{"timestamp": NOW, "message": "m"}]);
        assert_eq!(
            fail(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "x", "logStreamName": "s", "logEvents": ev})
            ),
            group
        );
        assert_eq!(
            fail(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "g", "logStreamName": "x", "logEvents": ev})
            ),
            stream
        );
        assert_eq!(
            fail(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "x", "logStreamName": "s"})
            ),
            group
        );
        assert_eq!(
            fail(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logStreamName": "x"})
            ),
            stream
        );
        assert_eq!(
            fail(
                &s,
                "CreateLogStream",
                json!({"logGroupName": "x", "logStreamName": "s"})
            ),
            group
        );
        assert_eq!(
            fail(&s, "DescribeLogStreams", json!({"logGroupName": "x"})),
            group
        );
        assert_eq!(
            fail(&s, "FilterLogEvents", json!({"logGroupName": "x"})),
            group
        );
        assert_eq!(
            fail(&s, "DeleteLogGroup", json!({"logGroupName": "x"})),
            group
        );
        assert_eq!(
            fail(
                &s,
                "DeleteLogStream",
                json!({"logGroupName": "g", "logStreamName": "x"})
            ),
            stream
        );
    }

    #[test]
    fn creating_twice_is_already_exists() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        assert_eq!(
            fail(&s, "CreateLogGroup", json!({"logGroupName": "g"})),
            (
                "ResourceAlreadyExistsException".into(),
                "The specified log group already exists".into()
            )
        );
        assert_eq!(
            fail(
                &s,
                "CreateLogStream",
                json!({"logGroupName": "g", "logStreamName": "s"})
            ),
            (
                "ResourceAlreadyExistsException".into(),
                "The specified log stream already exists".into()
            )
        );
    }

    #[test]
    fn names_are_checked_against_the_model() {
        let (_d, s) = fresh();
        assert_eq!(
            fail(&s, "CreateLogGroup", json!({"logGroupName": "a:b"})),
            ("InvalidParameterException".into(), r"1 validation error detected: Value 'a:b' at 'logGroupName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\.\-_/#A-Za-z0-9]+".into())
        );
        assert_eq!(
            fail(&s, "CreateLogGroup", json!({"logGroupName": ""})),
            ("InvalidParameterException".into(), "1 validation error detected: Value '' at 'logGroupName' failed to satisfy constraint: Member must have length greater than or equal to 1".into())
        );
        assert_eq!(
            kind(
                &s,
                "CreateLogGroup",
                json!({"logGroupName": "a".repeat(513)})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(&s, "CreateLogGroup", json!({"logGroupName": "é"})),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(&s, "CreateLogGroup", json!({"logGroupName": "aws/x"})),
            "InvalidParameterException"
        );
        ok(
            &s,
            "CreateLogGroup",
            json!({"logGroupName": "a".repeat(512)}),
        );
        ok(
            &s,
            "CreateLogGroup",
            json!({"logGroupName": "/aws/x#y.z-_/9"}),
        );
        let g = "/aws/x#y.z-_/9";
        for bad in ["a:b", "a*b", ""] {
            assert_eq!(
                kind(
                    &s,
                    "CreateLogStream",
                    json!({"logGroupName": g, "logStreamName": bad})
                ),
                "InvalidParameterException",
                "{bad:?}"
            );
        }
        assert_eq!(
            fail(&s, "CreateLogStream", json!({"logGroupName": g, "logStreamName": "a*b"})).1,
            "1 validation error detected: Value 'a*b' at 'logStreamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [^:*]*"
        );
        // 512 characters, 1,024 bytes in UTF-8: too long for a hex file name.
        ok(
            &s,
            "CreateLogStream",
            json!({"logGroupName": g, "logStreamName": "é".repeat(512)}),
        );
        assert_eq!(
            kind(
                &s,
                "CreateLogStream",
                json!({"logGroupName": g, "logStreamName": "é".repeat(513)})
            ),
            "InvalidParameterException"
        );
        // Two violations are answered together.
        let (_, m) = fail(
            &s,
            "CreateLogStream",
            json!({"logGroupName": "a:b", "logStreamName": "c*"}),
        );
        assert!(
            m.starts_with("2 validation errors detected: Value 'a:b'"),
            "{m}"
        );
    }

    #[test]
    fn missing_members_are_invalid_parameters() {
        let (_d, s) = fresh();
        assert_eq!(
            fail(&s, "CreateLogGroup", json!({})),
            ("InvalidParameterException".into(), "1 validation error detected: Value null at 'logGroupName' failed to satisfy constraint: Member must not be null".into())
        );
        assert_eq!(
            fail(&s, "PutLogEvents", json!({"logGroupName": "g", "logStreamName": "s", "logEvents": [{"message": ""}]})).1,
            "2 validation errors detected: Value null at 'logEvents.1.member.timestamp' failed to satisfy constraint: Member must not be null; Value '' at 'logEvents.1.member.message' failed to satisfy constraint: Member must have length greater than or equal to 1"
        );
        assert_eq!(
            fail(&s, "PutLogEvents", json!({"logGroupName": "g", "logStreamName": "s", "logEvents": [{"timestamp": -1, "message": "m"}]})).1,
            "1 validation error detected: Value '-1' at 'logEvents.1.member.timestamp' failed to satisfy constraint: Member must have value greater than or equal to 0"
        );
        assert_eq!(
            kind(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s"})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(&s, "GetLogEvents", json!({"logGroupName": "g"})),
            "InvalidParameterException"
        );
        assert_eq!(
            fail(&s, "GetLogEvents", json!({"logGroupName": "g", "logStreamName": "s", "limit": 10_001})).1,
            "1 validation error detected: Value '10001' at 'limit' failed to satisfy constraint: Member must have value less than or equal to 10000"
        );
        assert_eq!(
            kind(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "limit": 0})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(&s, "DescribeLogGroups", json!({"limit": 51})),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(&s, "DescribeLogGroups", json!({"nextToken": ""})),
            "InvalidParameterException"
        );
    }

    #[test]
    fn wrong_types_and_bad_json_are_serialization_errors() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        let raw = |op: &str, body: &str| s.handle(op, body.as_bytes(), NOW);
        let r = raw("CreateLogGroup", "{\"logGroupName\": ");
        assert_eq!(
            (r.status, r.body["__type"].clone()),
            (400, json!("SerializationException"))
        );
        assert_eq!(
            raw("CreateLogGroup", "[1]").body["__type"],
            "SerializationException"
        );
        assert_eq!(
            fail(&s, "CreateLogGroup", json!({"logGroupName": 5})),
            (
                "SerializationException".into(),
                "VALUE_NUMBER_INT can not be converted to a String".into()
            )
        );
        assert_eq!(
            kind(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "limit": "5"})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "limit": 1.5})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "startFromHead": "true"})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "logEvents": {}})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "logEvents": ["m"]})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "PutLogEvents",
                json!({"logGroupName": "g", "logStreamName": "s", "logEvents": [{"timestamp": "1", "message": "m"}]})
            ),
            "SerializationException"
        );
        assert_eq!(
            kind(
                &s,
                "FilterLogEvents",
                json!({"logGroupName": "g", "logStreamNames": "s"})
            ),
            "SerializationException"
        );
        // Null is absent; an empty body is an empty request.
        ok(&s, "DescribeLogGroups", json!({"limit": null}));
        assert_eq!(raw("DescribeLogGroups", "").status, 200);
    }

    #[test]
    fn unknown_operations_are_refused() {
        let (_d, s) = fresh();
        assert_eq!(
            fail(&s, "PutRetentionPolicy", json!({})),
            (
                "UnknownOperationException".into(),
                "Unknown operation PutRetentionPolicy".into()
            )
        );
        // Before the body is read.
        assert_eq!(
            s.handle("Nope", b"{", NOW).body["__type"],
            "UnknownOperationException"
        );
    }

    #[test]
    fn groups_are_named_or_identified() {
        let (_d, s) = five();
        let arn = "arn:aws:logs:us-east-1:123456789012:log-group:g";
        for id in ["g", arn] {
            let got = ok(
                &s,
                "GetLogEvents",
                json!({"logGroupIdentifier": id, "logStreamName": "s"}),
            );
            assert_eq!(got["events"].as_array().map(Vec::len), Some(5), "{id}");
        }
        assert_eq!(
            fail(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "g", "logGroupIdentifier": "g", "logStreamName": "s"})
            ),
            (
                "InvalidParameterException".into(),
                "LogGroupName and LogGroupIdentifier cannot both be specified".into()
            )
        );
        assert_eq!(
            kind(&s, "GetLogEvents", json!({"logStreamName": "s"})),
            "InvalidParameterException"
        );
        // The model's identifier pattern has no '*': the ARN form with ":*" is refused.
        assert_eq!(
            kind(
                &s,
                "GetLogEvents",
                json!({"logGroupIdentifier": format!("{arn}:*"), "logStreamName": "s"})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            ok(&s, "DescribeLogStreams", json!({"logGroupIdentifier": arn}))["logStreams"][0]
                ["logStreamName"],
            "s"
        );
        assert_eq!(
            ok(&s, "FilterLogEvents", json!({"logGroupIdentifier": arn}))["events"]
                .as_array()
                .map(Vec::len),
            Some(5)
        );
    }

    #[test]
    fn describe_log_groups_pages_in_name_order() {
        let (_d, s) = fresh();
        for g in ["b/2", "a/1", "b/1", "c", "b/3"] {
            ok(&s, "CreateLogGroup", json!({"logGroupName": g}));
        }
        let names = |v: &Value| -> Vec<String> {
            v["logGroups"]
                .as_array()
                .expect("groups")
                .iter()
                .map(|g| g["logGroupName"].as_str().expect("name").to_string())
                .collect()
        };
        let all = ok(&s, "DescribeLogGroups", json!({}));
        assert_eq!(names(&all), ["a/1", "b/1", "b/2", "b/3", "c"]);
        assert_eq!(all.get("nextToken"), None);
        assert_eq!(
            all["logGroups"][0],
            json!({"logGroupName": "a/1", "creationTime": NOW, "metricFilterCount": 0, "storedBytes": 0, "logGroupClass": "STANDARD"})
        );
        let p1 = ok(
            &s,
            "DescribeLogGroups",
            json!({"logGroupNamePrefix": "b/", "limit": 2}),
        );
        assert_eq!(names(&p1), ["b/1", "b/2"]);
        let p2 = ok(
            &s,
            "DescribeLogGroups",
            json!({"logGroupNamePrefix": "b/", "limit": 2, "nextToken": p1["nextToken"]}),
        );
        assert_eq!(names(&p2), ["b/3"]);
        assert_eq!(p2.get("nextToken"), None);
        let pat = ok(
            &s,
            "DescribeLogGroups",
            json!({"logGroupNamePattern": "/1"}),
        );
        assert_eq!(names(&pat), ["a/1", "b/1"]);
        assert_eq!(
            pat["logGroups"][0],
            json!({"logGroupName": "a/1", "creationTime": NOW})
        );
        assert_eq!(
            kind(
                &s,
                "DescribeLogGroups",
                json!({"logGroupNamePattern": "1", "logGroupNamePrefix": "b"})
            ),
            "InvalidParameterException"
        );
        let ids = ok(
            &s,
            "DescribeLogGroups",
            json!({"logGroupIdentifiers": ["c", "arn:aws:logs:r:1:log-group:b/2"]}),
        );
        assert_eq!(names(&ids), ["b/2", "c"]);
    }

    #[test]
    fn describe_log_streams_orders_filters_and_pages() {
        let (_d, s) = fresh();
        for st in ["b", "a", "c", "ab"] {
            setup(&s, "g", st);
        }
        put(&s, "g", "a", &[(NOW - 10, "x")]);
        put(&s, "g", "b", &[(NOW - 30, "x"), (NOW - 5, "y")]);
        put(&s, "g", "c", &[(NOW - 20, "x")]);
        let names = |v: &Value| -> Vec<String> {
            v["logStreams"]
                .as_array()
                .expect("streams")
                .iter()
                .map(|g| g["logStreamName"].as_str().expect("name").to_string())
                .collect()
        };
        let q = |b: Value| ok(&s, "DescribeLogStreams", b);
        assert_eq!(
            names(&q(json!({"logGroupName": "g"}))),
            ["a", "ab", "b", "c"]
        );
        assert_eq!(
            names(&q(json!({"logGroupName": "g", "descending": true}))),
            ["c", "b", "ab", "a"]
        );
        assert_eq!(
            names(&q(json!({"logGroupName": "g", "logStreamNamePrefix": "a"}))),
            ["a", "ab"]
        );
        assert_eq!(
            names(&q(json!({"logGroupName": "g", "orderBy": "LastEventTime"}))),
            ["ab", "c", "a", "b"]
        );
        assert_eq!(
            names(&q(
                json!({"logGroupName": "g", "orderBy": "LastEventTime", "descending": true})
            )),
            ["b", "a", "c", "ab"]
        );
        let mut seen = Vec::new();
        let mut body = json!({"logGroupName": "g", "orderBy": "LastEventTime", "descending": true, "limit": 1});
        loop {
            let page = q(body.clone());
            seen.extend(names(&page));
            match page.get("nextToken") {
                Some(t) => body["nextToken"] = t.clone(),
                None => break,
            }
            assert!(seen.len() < 10);
        }
        assert_eq!(seen, ["b", "a", "c", "ab"]);
        let b = q(json!({"logGroupName": "g", "logStreamNamePrefix": "b"}));
        assert_eq!(
            b["logStreams"][0],
            json!({
                "logStreamName": "b", "creationTime": NOW, "firstEventTimestamp": NOW - 30,
                "lastEventTimestamp": NOW - 5, "lastIngestionTime": NOW,
                "uploadSequenceToken": format!("{:056}", 2), "storedBytes": 0
            })
        );
        let ab = q(json!({"logGroupName": "g", "logStreamNamePrefix": "ab"}));
        assert_eq!(
            ab["logStreams"][0],
            json!({"logStreamName": "ab", "creationTime": NOW, "uploadSequenceToken": format!("{:056}", 0), "storedBytes": 0})
        );
        assert_eq!(
            fail(
                &s,
                "DescribeLogStreams",
                json!({"logGroupName": "g", "orderBy": "LastEventTime", "logStreamNamePrefix": "a"})
            ),
            (
                "InvalidParameterException".into(),
                "Cannot order by LastEventTime with a logStreamNamePrefix.".into()
            )
        );
        assert_eq!(
            kind(
                &s,
                "DescribeLogStreams",
                json!({"logGroupName": "g", "orderBy": "Size"})
            ),
            "InvalidParameterException"
        );
    }

    #[test]
    fn filter_patterns() {
        let p = |s: &str| Pattern::parse(s).expect("pattern");
        let m = |pat: &str, msg: &str| p(pat).matches(msg);
        assert!(m("", "anything"));
        assert!(m("   ", "anything"));
        assert!(m("ERROR", "[ERROR] boom"));
        assert!(!m("ERROR", "[error] boom"));
        assert!(m("ERROR disk", "disk: ERROR"));
        assert!(!m("ERROR disk", "ERROR net"));
        assert!(m("\"disk full\"", "the disk full again"));
        assert!(!m("\"disk full\"", "full disk"));
        assert!(m("disk full", "full disk"));
        assert!(m("?WARN ?ERROR", "an ERROR"));
        assert!(!m("?WARN ?ERROR", "INFO"));
        assert!(m("ERROR -retry", "ERROR final"));
        assert!(!m("ERROR -retry", "ERROR will retry"));
        assert!(!m("-\"will retry\"", "ERROR will retry"));
        assert!(m(r#""say \"hi\"""#, r#"they say "hi""#));
        assert!(m("a-b", "x a-b y"));
        assert_eq!(
            p(r#"?a -"b c" d "e""#),
            Pattern {
                all: vec!["d".into(), "e".into()],
                any: vec!["a".into()],
                none: vec!["b c".into()]
            }
        );
        for bad in ["\"open", "{ $.a = 1 }", "[ip, user]"] {
            assert_eq!(
                Pattern::parse(bad).map_err(|f| f.kind),
                Err("InvalidParameterException"),
                "{bad}"
            );
        }
    }

    fn filter_store() -> (TempDir, LogStore) {
        let (d, s) = fresh();
        for st in ["app/1", "app/2", "web"] {
            setup(&s, "g", st);
        }
        put(
            &s,
            "g",
            "app/1",
            &[
                (NOW - 50, "ERROR one"),
                (NOW - 30, "info two"),
                (NOW - 10, "ERROR three"),
            ],
        );
        put(
            &s,
            "g",
            "app/2",
            &[(NOW - 40, "ERROR four"), (NOW - 20, "warn five")],
        );
        put(&s, "g", "web", &[(NOW - 45, "GET /ERROR six")]);
        (d, s)
    }

    #[test]
    fn filter_log_events_interleaves_and_filters() {
        let (_d, s) = filter_store();
        let f = |extra: Value| {
            let mut body = json!({"logGroupName": "g"});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            ok(&s, "FilterLogEvents", body)
        };
        let all = f(json!({}));
        assert_eq!(
            messages(&all["events"]),
            [
                "ERROR one",
                "GET /ERROR six",
                "ERROR four",
                "info two",
                "warn five",
                "ERROR three"
            ]
        );
        assert_eq!(all["searchedLogStreams"], json!([]));
        assert_eq!(all.get("nextToken"), None);
        let first = &all["events"][0];
        assert_eq!(first["logStreamName"], "app/1");
        assert_eq!(first["timestamp"], json!(NOW - 50));
        assert_eq!(first["ingestionTime"], json!(NOW));
        assert_eq!(first["eventId"].as_str().map(str::len), Some(56));
        let ids: std::collections::HashSet<&str> = all["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["eventId"].as_str())
            .collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(
            messages(&f(json!({"filterPattern": "ERROR"}))["events"]),
            ["ERROR one", "GET /ERROR six", "ERROR four", "ERROR three"]
        );
        assert_eq!(
            messages(
                &f(json!({"filterPattern": "ERROR", "logStreamNamePrefix": "app/"}))["events"]
            ),
            ["ERROR one", "ERROR four", "ERROR three"]
        );
        assert_eq!(
            messages(&f(json!({"logStreamNames": ["web", "app/2", "none"]}))["events"]),
            ["GET /ERROR six", "ERROR four", "warn five"]
        );
        assert_eq!(
            messages(&f(json!({"filterPattern": "\"ERROR t\""}))["events"]),
            ["ERROR three"]
        );
        // Both ends of the time range are included.
        assert_eq!(
            messages(&f(json!({"startTime": NOW - 45, "endTime": NOW - 30}))["events"]),
            ["GET /ERROR six", "ERROR four", "info two"]
        );
        let newest = f(json!({"startFromHead": false, "startTime": NOW - 1000, "limit": 2}));
        assert_eq!(messages(&newest["events"]), ["ERROR three", "warn five"]);
        let older =
            f(json!({"startTime": NOW - 1000, "limit": 2, "nextToken": newest["nextToken"]}));
        assert_eq!(messages(&older["events"]), ["info two", "ERROR four"]);
        assert_eq!(
            kind(
                &s,
                "FilterLogEvents",
                json!({"logGroupName": "g", "startFromHead": false, "startTime": 0})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(
                &s,
                "FilterLogEvents",
                json!({"logGroupName": "g", "logStreamNames": ["web"], "logStreamNamePrefix": "w"})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(
                &s,
                "FilterLogEvents",
                json!({"logGroupName": "g", "filterPattern": "{ $.x = 1 }"})
            ),
            "InvalidParameterException"
        );
        assert_eq!(
            kind(
                &s,
                "FilterLogEvents",
                json!({"logGroupName": "g", "nextToken": "F/1/2"})
            ),
            "InvalidParameterException"
        );
    }

    #[test]
    fn filter_log_events_pages_with_next_token() {
        let (_d, s) = filter_store();
        let mut seen = Vec::new();
        let mut body = json!({"logGroupName": "g", "limit": 1});
        let mut pages = 0;
        loop {
            let page = ok(&s, "FilterLogEvents", body.clone());
            pages += 1;
            seen.extend(messages(&page["events"]));
            match page.get("nextToken") {
                Some(t) => body["nextToken"] = t.clone(),
                None => break,
            }
            assert!(pages < 20);
        }
        assert_eq!(pages, 6);
        assert_eq!(
            seen,
            [
                "ERROR one",
                "GET /ERROR six",
                "ERROR four",
                "info two",
                "warn five",
                "ERROR three"
            ]
        );
    }

    #[test]
    fn events_from_several_writers_are_read_in_timestamp_order() {
        let (_d, s) = fresh();
        setup(&s, "g", "s");
        put(&s, "g", "s", &[(NOW - 100, "b1"), (NOW - 50, "b2")]);
        put(&s, "g", "s", &[(NOW - 200, "a1"), (NOW - 75, "a2")]);
        put(&s, "g", "s", &[(NOW - 50, "c1")]);
        assert_eq!(
            messages(&get(&s, json!({}))["events"]),
            ["a1", "b1", "a2", "b2", "c1"]
        );
        let store = Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let t = NOW - 1000 + i * 10 + w;
                        put(&store, "g", "s", &[(t, &format!("w{w}-{i}"))]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let got = get(&store, json!({"startFromHead": true}));
        let events = got["events"].as_array().expect("events");
        assert_eq!(events.len(), 105);
        let stamps: Vec<i64> = events
            .iter()
            .filter_map(|e| e["timestamp"].as_i64())
            .collect();
        let mut sorted = stamps.clone();
        sorted.sort();
        assert_eq!(stamps, sorted);
    }

    #[test]
    fn a_reopened_store_sees_everything() {
        let d = TempDir::new();
        let group = "/aws/lambda-microvms/app#1";
        let stream = "2024/01/01/[$LATEST]abc#def";
        let long = "ü/".repeat(256);
        let (tokens, before) = {
            let s = LogStore::open(&d.0).expect("open");
            setup(&s, group, stream);
            setup(&s, group, &long);
            setup(&s, "other", "x");
            put(
                &s,
                group,
                stream,
                &[(NOW - 10, "late"), (NOW - 5, "later\nline")],
            );
            put(&s, group, stream, &[(NOW - 20, "early é")]);
            put(&s, group, &long, &[(NOW, "in the long one")]);
            let first = ok(
                &s,
                "GetLogEvents",
                json!({"logGroupName": group, "logStreamName": stream, "startFromHead": true, "limit": 1}),
            );
            (
                first,
                ok(&s, "DescribeLogStreams", json!({"logGroupName": group})),
            )
        };
        let s = LogStore::open(&d.0).expect("reopen");
        assert_eq!(
            ok(&s, "DescribeLogStreams", json!({"logGroupName": group})),
            before
        );
        let all = ok(
            &s,
            "GetLogEvents",
            json!({"logGroupName": group, "logStreamName": stream, "startFromHead": true}),
        );
        assert_eq!(messages(&all["events"]), ["early é", "late", "later\nline"]);
        // Tokens from before the reopening still read from the same place.
        let rest = ok(
            &s,
            "GetLogEvents",
            json!({"logGroupName": group, "logStreamName": stream, "nextToken": tokens["nextForwardToken"]}),
        );
        assert_eq!(messages(&rest["events"]), ["late", "later\nline"]);
        let l = ok(
            &s,
            "GetLogEvents",
            json!({"logGroupName": group, "logStreamName": long}),
        );
        assert_eq!(messages(&l["events"]), ["in the long one"]);
        let groups = ok(&s, "DescribeLogGroups", json!({}));
        assert_eq!(groups["logGroups"].as_array().map(Vec::len), Some(2));
        assert_eq!(groups["logGroups"][0]["logGroupName"], group);
        // New events continue the numbering: the sequence token counts on.
        let out = put(&s, group, stream, &[(NOW, "after")]);
        assert_eq!(out["nextSequenceToken"], json!(format!("{:056}", 4)));
    }

    #[test]
    fn deleted_groups_and_streams_stay_deleted() {
        let d = TempDir::new();
        {
            let s = LogStore::open(&d.0).expect("open");
            setup(&s, "g", "s");
            setup(&s, "g", "t");
            setup(&s, "h", "s");
            put(&s, "g", "s", &[(NOW, "old")]);
            ok(
                &s,
                "DeleteLogStream",
                json!({"logGroupName": "g", "logStreamName": "s"}),
            );
            ok(&s, "DeleteLogGroup", json!({"logGroupName": "h"}));
            assert_eq!(
                kind(
                    &s,
                    "GetLogEvents",
                    json!({"logGroupName": "g", "logStreamName": "s"})
                ),
                "ResourceNotFoundException"
            );
        }
        let s = LogStore::open(&d.0).expect("reopen");
        let streams = ok(&s, "DescribeLogStreams", json!({"logGroupName": "g"}));
        assert_eq!(streams["logStreams"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            kind(&s, "DescribeLogStreams", json!({"logGroupName": "h"})),
            "ResourceNotFoundException"
        );
        // A new stream of the same name starts empty.
        setup(&s, "g", "s");
        assert_eq!(get(&s, json!({}))["events"], json!([]));
        setup(&s, "h", "s");
        assert_eq!(
            ok(
                &s,
                "GetLogEvents",
                json!({"logGroupName": "h", "logStreamName": "s"})
            )["events"],
            json!([])
        );
        let root: Vec<String> = std::fs::read_dir(&d.0)
            .expect("root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(root.iter().all(|n| !n.starts_with('.')), "{root:?}");
    }

    #[test]
    fn crash_leftovers_are_repaired_at_open() {
        let d = TempDir::new();
        {
            let s = LogStore::open(&d.0).expect("open");
            setup(&s, "g", "s");
            put(&s, "g", "s", &[(NOW, "whole")]);
        }
        let dir = d.0.join(hex(b"g"));
        let events = disk::events_path(&dir, &hex(b"s"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&events)
            .expect("events");
        std::io::Write::write_all(&mut f, b"{\"timestamp\":1,\"mess").expect("torn");
        std::fs::write(disk::events_path(&dir, "orphan"), b"{}\n").expect("orphan");
        std::fs::create_dir(d.0.join(".tmp-abc")).expect("tmp");
        let s = LogStore::open(&d.0).expect("reopen");
        put(&s, "g", "s", &[(NOW + 1, "next")]);
        assert_eq!(messages(&get(&s, json!({}))["events"]), ["whole", "next"]);
        assert!(!disk::events_path(&dir, "orphan").exists());
        assert!(!d.0.join(".tmp-abc").exists());
        drop(s);
        let s = LogStore::open(&d.0).expect("third");
        assert_eq!(messages(&get(&s, json!({}))["events"]), ["whole", "next"]);
    }

    #[test]
    fn stems_fit_file_names_and_stay_unique() {
        assert_eq!(disk::free_stem("g", |_| false), "67");
        let long = "x".repeat(512);
        let stem = disk::free_stem(&long, |_| false);
        assert!(stem.starts_with('~') && stem.len() == 17, "{stem}");
        let taken = [stem.clone(), format!("{stem}-1")];
        assert_eq!(
            disk::free_stem(&long, |s| taken.iter().any(|t| t == s)),
            format!("{stem}-2")
        );
        assert_eq!(disk::free_stem(&"y".repeat(100), |_| false).len(), 200);
    }

    #[test]
    fn admit_reports_the_kept_range() {
        let ev = |ts: &[i64]| -> Vec<Input<'static>> {
            ts.iter()
                .map(|t| Input {
                    timestamp: *t,
                    message: "m",
                })
                .collect()
        };
        assert_eq!(
            admit(&ev(&[NOW - TOO_OLD_MS - 1, NOW, NOW + TOO_NEW_MS + 1]), NOW).ok(),
            Some(Admitted {
                accepted: 1..2,
                too_old_end: Some(0),
                too_new_start: Some(2)
            })
        );
        assert_eq!(
            admit(&ev(&[NOW + TOO_NEW_MS + 1]), NOW).ok(),
            Some(Admitted {
                accepted: 0..0,
                too_old_end: None,
                too_new_start: Some(0)
            })
        );
    }
}
