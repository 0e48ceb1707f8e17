//! Property tests (issue 11): sniffing an ingress connection's first bytes, the
//! `X-aws-proxy-port` header and WebSocket subprotocols, and the hook-path border.

use super::borders::Borders;
use super::route::route;
use super::sniff::{sniff, Kind};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use microvm_protocol::ports::{DEFAULT_APP, LEASE};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------
// Sniffing

/// Every method in the IANA HTTP method registry (but `PRI`, the HTTP/2 preface's).
const METHODS: &[&str] = &[
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Up to 16 empty lines (`\r\n` or `\n`), which an HTTP/1 server skips.
fn empty_lines() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(&b"\r\n"[..]), Just(&b"\n"[..])], 0..8)
        .prop_map(|v| v.concat())
}

/// The first bytes of a connection: HTTP/1 requests, the h2c preface, TLS, SSH,
/// Redis, lower-case text, binary.
fn first_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (empty_lines(), prop::sample::select(METHODS), "/[a-z]{0,8}").prop_map(|(e, m, p)| [
            e,
            format!("{m} {p} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
        ]
        .concat()),
        empty_lines().prop_map(|e| [e, H2_PREFACE.to_vec()].concat()),
        Just(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        Just(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
        Just(b"*1\r\n$4\r\nPING\r\n".to_vec()),
        "[a-z]{1,8} [a-z]{1,8}\r\n".prop_map(String::into_bytes),
        "[A-Z]{1,30}[ \r\n0-9a-z]?".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A decision, once made, stands: more bytes never turn one kind into another,
    /// so how the client's bytes were cut into reads does not matter. (Past 16 empty
    /// lines the sniffer gives up on HTTP; that pathological case is left out.)
    #[test]
    fn a_decision_stands_whatever_follows(b in first_bytes(), more in first_bytes(), at in any::<Index>()) {
        let all = [b.clone(), more].concat();
        let cut = at.index(all.len() + 1);
        let prefix = &all[..cut];
        let lines = prefix.iter().take_while(|c| matches!(c, b'\r' | b'\n')).count();
        let k = sniff(prefix);
        if k != Kind::Unknown && lines <= 16 {
            prop_assert_eq!(sniff(&all), k, "{:?} then {:?}", String::from_utf8_lossy(prefix), String::from_utf8_lossy(&all[cut..]));
        }
    }

    /// Every registered HTTP method makes an HTTP/1 request, and no prefix of its
    /// request line is taken for something else: however the bytes arrive.
    #[test]
    fn every_method_is_http1_however_the_bytes_arrive(
        e in empty_lines(),
        m in prop::sample::select(METHODS),
        path in "/[a-z0-9/]{0,10}",
    ) {
        let req = [e, format!("{m} {path} HTTP/1.1\r\n\r\n").into_bytes()].concat();
        for n in 0..=req.len() {
            let k = sniff(&req[..n]);
            prop_assert!(
                k == Kind::Unknown || k == Kind::Http1,
                "{:?} is {:?}", String::from_utf8_lossy(&req[..n]), k
            );
        }
        prop_assert_eq!(sniff(&req), Kind::Http1);
    }

    /// The h2c preface, after up to 16 empty lines, is h2c; its prefixes wait.
    #[test]
    fn the_h2c_preface_is_h2c(e in empty_lines(), tail in prop::collection::vec(any::<u8>(), 0..16)) {
        let all = [e.clone(), H2_PREFACE.to_vec(), tail].concat();
        for n in 0..e.len() + 14 {
            prop_assert_eq!(sniff(&all[..n]), Kind::Unknown);
        }
        prop_assert_eq!(sniff(&all), Kind::H2c);
    }

    /// Anything that starts with neither an upper-case letter, `P`RI, nor an empty
    /// line is a byte stream from its first byte; nothing panics on any input.
    #[test]
    fn other_protocols_are_streams_from_the_first_byte(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = sniff(&b);
        if let Some(&c) = b.first() {
            if !c.is_ascii_uppercase() && c != b'\r' && c != b'\n' {
                prop_assert_eq!(sniff(&b), Kind::Raw);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Routing

fn header_name_case(name: &str, flips: &[bool]) -> String {
    name.chars()
        .zip(flips.iter().cycle())
        .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
        .collect()
}

/// What the port header must mean: optional blanks around decimal digits (a `+`
/// allowed, as Rust's integer parsing has it), 1-65535.
fn port_model(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.trim_matches([' ', '\t']);
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.trim_start_matches('0').parse().unwrap_or(0);
    (digits.trim_start_matches('0').len() <= 5 && (1..=65535).contains(&n)).then_some(n as u16)
}

fn port_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u16>(), "[ \t]{0,2}", "[ \t]{0,2}", "0{0,3}")
            .prop_map(|(p, a, b, z)| format!("{a}{z}{p}{b}").into_bytes()),
        Just(b"65536".to_vec()),
        Just(b"0".to_vec()),
        Just(b"+80".to_vec()),
        Just(b"-80".to_vec()),
        Just(b"80 80".to_vec()),
        Just(b"99999999999999999999".to_vec()),
        "[0-9a-z .:]{0,8}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    })
}

/// Headers the application may see: none is a platform one.
fn app_header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("accept".to_string()),
            Just("x-aws-proxyish".to_string()),
            Just("x-aws-prox".to_string()),
            Just("x-forwarded-for".to_string()),
            "x-[a-z]{1,8}",
        ],
        "[ -~]{0,12}",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The port is the header's value when it is a port (1-65535), 8080 without
    /// the header, and otherwise the request is refused naming the header. Once
    /// routed, no `x-aws-proxy-*` header is left, in any spelling, and every other
    /// header is kept with all its values, in order.
    #[test]
    fn the_port_header_routes_and_platform_headers_go(
        port in prop::option::of(port_value()),
        platform in prop::collection::vec((
            "[a-z-]{1,8}".prop_filter("not the port header", |s| s != "port"),
            "[ -~]{0,8}",
            prop::collection::vec(any::<bool>(), 1..4),
        ), 0..4),
        app in prop::collection::vec(app_header(), 0..6),
        flips in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut h = HeaderMap::new();
        let mut want_kept: Vec<(String, String)> = Vec::new();
        for (i, (k, v)) in app.iter().enumerate() {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            want_kept.push((k.clone(), v.clone()));
            if let Some((suffix, value, case)) = platform.get(i) {
                let name = header_name_case(&format!("x-aws-proxy-{suffix}"), case);
                h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            }
        }
        if let Some(v) = &port {
            let name = header_name_case("X-aws-proxy-port", &flips);
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
        }
        let got = route(&mut h);
        match port.as_deref().map(port_model) {
            None => prop_assert_eq!(&got, &Ok(DEFAULT_APP)),
            Some(Some(p)) => prop_assert_eq!(&got, &Ok(p)),
            Some(None) => {
                let e = got.clone().expect_err("not a port");
                prop_assert!(e.starts_with("x-aws-proxy-port"), "{}", e);
            }
        }
        if got.is_ok() {
            prop_assert!(h.keys().all(|k| !k.as_str().starts_with("x-aws-proxy-")));
            let mut kept: Vec<(String, String)> = Vec::new();
            for name in h.keys() {
                for v in h.get_all(name) {
                    kept.push((name.to_string(), v.to_str().unwrap().to_string()));
                }
            }
            // Same headers; per name, the same values in the same order.
            want_kept.sort_by(|a, b| a.0.cmp(&b.0));
            kept.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(kept, want_kept);
        }
    }

    /// No header map makes routing panic, whatever bytes its values hold.
    #[test]
    fn routing_never_panics(
        headers in prop::collection::vec((
            prop_oneof![
                Just("x-aws-proxy-port".to_string()),
                Just("upgrade".to_string()),
                Just("sec-websocket-protocol".to_string()),
                "x-aws-proxy-[a-z]{0,4}",
            ],
            prop::collection::vec(any::<u8>(), 0..24),
        ), 0..8),
    ) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
            }
        }
        let _ = route(&mut h);
    }
}

/// One offered WebSocket subprotocol, and whether it is the platform's.
fn subprotocol() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        3 => prop_oneof![
            Just("chat".to_string()),
            Just("v2.chat".to_string()),
            Just("lambda-microvmsx".to_string()),
            Just("lambda-microvms.portal".to_string()),
            Just("lambda-microvms.authenticationx".to_string()),
            "[a-z][a-z0-9.]{0,8}",
        ].prop_map(|p| (p, false)),
        1 => Just(("lambda-microvms".to_string(), true)),
        1 => "[A-Za-z0-9]{0,12}".prop_map(|t| (format!("lambda-microvms.authentication.{t}"), true)),
        2 => prop_oneof![
            (1u16..=65535).prop_map(|p| p.to_string()),
            Just("0".to_string()),
            Just("65536".to_string()),
            Just("x".to_string()),
            Just(String::new()),
        ].prop_map(|n| (format!("lambda-microvms.port.{n}"), true)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A WebSocket upgrade goes to the port of the first `lambda-microvms.port.<n>`
    /// subprotocol offered (refused if that is not a port), else the header's or
    /// 8080; the application sees exactly the subprotocols that are not the
    /// platform's, in the order offered, and no header if there are none.
    #[test]
    fn websocket_subprotocols_route_and_the_platforms_go(
        offered in prop::collection::vec(prop::collection::vec(subprotocol(), 1..4), 1..4),
        blanks in prop::collection::vec("[ ]{0,2}", 1..6),
        header_port in prop::option::of(1u16..=65535),
        upgrade in prop::sample::select(vec!["websocket", "WebSocket", "WEBSOCKET"]),
    ) {
        let mut h = HeaderMap::new();
        h.insert(hyper::header::UPGRADE, HeaderValue::from_static(upgrade));
        if let Some(p) = header_port {
            h.insert("x-aws-proxy-port", HeaderValue::from(p));
        }
        let mut blank = blanks.iter().cycle();
        for value in &offered {
            let v = value
                .iter()
                .map(|(p, _)| format!("{}{p}{}", blank.next().unwrap(), blank.next().unwrap()))
                .collect::<Vec<_>>()
                .join(",");
            h.append(hyper::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&v).unwrap());
        }
        let all: Vec<&(String, bool)> = offered.iter().flatten().collect();
        let want_port = match all.iter().find_map(|(p, _)| p.strip_prefix("lambda-microvms.port.")) {
            Some(n) => n.parse::<u16>().ok().filter(|p| *p > 0).ok_or(()),
            None => Ok(header_port.unwrap_or(DEFAULT_APP)),
        };
        let got = route(&mut h);
        match want_port {
            Ok(p) => prop_assert_eq!(got, Ok(p)),
            Err(()) => {
                prop_assert!(got.as_ref().is_err_and(|e| e.contains("lambda-microvms.port.")), "{:?}", got);
                return Ok(());
            }
        }
        let kept: Vec<&str> = all.iter().filter(|(_, platform)| !platform).map(|(p, _)| p.as_str()).collect();
        let values: Vec<_> = h.get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL).iter().collect();
        if kept.is_empty() {
            prop_assert!(values.is_empty(), "{:?}", values);
        } else {
            prop_assert_eq!(values.len(), 1);
            prop_assert_eq!(values[0].to_str().unwrap(), kept.join(", "));
        }
    }
}

// ---------------------------------------------------------------------------------
// The hook-path border

const HOOKS: &[&str] = &["ready", "validate", "run", "resume", "suspend", "terminate"];

/// How one path segment is spelt: case flipped, characters percent-encoded (hex in
/// either case) and the escapes themselves encoded again (up to 4 levels in all),
/// `;parameters` appended.
#[derive(Debug, Clone)]
struct Spelling {
    upper: Vec<bool>,
    encode: Vec<bool>,
    hex_upper: bool,
    depth: usize,
    param: Option<String>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (
        prop::collection::vec(any::<bool>(), 1..20),
        prop::collection::vec(prop::bool::weighted(0.2), 1..20),
        any::<bool>(),
        1usize..=4,
        prop::option::weighted(0.2, "[a-z=]{0,5}"),
    )
        .prop_map(|(upper, encode, hex_upper, depth, param)| Spelling {
            upper,
            encode,
            hex_upper,
            depth,
            param,
        })
}

fn escape(c: u8, upper: bool) -> String {
    if upper {
        format!("%{c:02X}")
    } else {
        format!("%{c:02x}")
    }
}

impl Spelling {
    fn spell(&self, seg: &str) -> String {
        let mut out = String::new();
        for (i, c) in seg.bytes().enumerate() {
            let c = if self.upper[i % self.upper.len()] {
                c.to_ascii_uppercase()
            } else {
                c
            };
            if self.encode[i % self.encode.len()] {
                out.push_str(&escape(c, self.hex_upper));
            } else {
                out.push(c as char);
            }
        }
        // Deeper levels: every `%` escaped again.
        for _ in 1..self.depth {
            out = out.replace('%', &escape(b'%', self.hex_upper));
        }
        if let Some(p) = &self.param {
            out.push(';');
            out.push_str(p);
        }
        out
    }
}

/// What may stand between two segments: slashes, backslashes, empty and `.`
/// segments, an encoded slash or dot, a detour through `..`.
fn separator() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("/".to_string()),
        1 => Just("\\".to_string()),
        1 => Just("//".to_string()),
        1 => Just("/./".to_string()),
        1 => Just("%2F".to_string()),
        1 => Just("%2f".to_string()),
        1 => Just("/%2e/".to_string()),
        1 => Just("/x/%2E%2e/".to_string()),
        1 => "[a-z]{1,6}".prop_map(|s| format!("/{s}/../")),
        1 => "[a-z]{1,6}".prop_map(|s| format!("\\{s}\\..\\")),
    ]
}

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("http://mvm.example".to_string()),
        1 => Just("//".to_string()),
        1 => "[a-z]{1,6}".prop_map(|s| format!("/{s}/..")),
        1 => "[a-z]{1,6}".prop_map(|s| format!("/{s}")),
    ]
}

/// `/aws/lambda-microvms/runtime/v1/<hook>`, spelt as the given parts say.
fn hook_path(pre: &str, spellings: &[Spelling], seps: &[String], hook: &str, tail: &str) -> String {
    let segs = ["aws", "lambda-microvms", "runtime", "v1", hook];
    let mut p = pre.to_string();
    for (i, seg) in segs.iter().enumerate() {
        p.push_str(&seps[i % seps.len()]);
        p.push_str(&spellings[i % spellings.len()].spell(seg));
    }
    p.push_str(tail);
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every spelling of a hook path that a server in the guest may normalise to one
    /// is refused, on every port.
    #[test]
    fn hook_paths_are_refused_in_every_spelling(
        pre in prefix(),
        spellings in prop::collection::vec(spelling(), 1..6),
        seps in prop::collection::vec(separator(), 1..6),
        hook in prop::sample::select(HOOKS),
        tail in prop::sample::select(vec!["", "?x=1", "/", "#f", "/extra"]),
        hooks_port in prop::option::of(any::<u16>()),
        port in any::<u16>(),
    ) {
        let path = hook_path(&pre, &spellings, &seps, hook, tail);
        let b = Borders::new(hooks_port);
        prop_assert!(b.refusal(&path, port).is_some(), "{} passes on {}", path, port);
    }

    /// A path whose `aws/lambda-microvms/runtime` is broken (a `..` takes one of the
    /// three back out, or one is misspelt) is the application's, on its ports.
    #[test]
    fn near_misses_pass(
        spelling in spelling(),
        broken in 0usize..3,
        how in 0usize..3,
        hook in prop::sample::select(HOOKS),
    ) {
        // No `;parameter`: a misspelling must not land in one.
        let spelling = Spelling { param: None, ..spelling };
        let mut segs: Vec<String> = ["aws", "lambda-microvms", "runtime", "v1", hook]
            .iter()
            .map(|s| spelling.spell(s))
            .collect();
        match how {
            0 => segs.insert(broken + 1, "..".into()),
            1 => segs[broken].push('x'),
            _ => segs[broken] = spelling.spell(["amazon", "lambda-microvm", "runtimes"][broken]),
        }
        let path = format!("/{}", segs.join("/"));
        let b = Borders::new(Some(9000));
        prop_assert_eq!(b.refusal(&path, DEFAULT_APP), None, "{}", path);
    }

    /// Ports: the lease port always, the hooks port when it is not 8080 (where paths
    /// are checked one by one instead and byte streams are refused); every other
    /// port is open to the application's paths. No path string makes this panic.
    #[test]
    fn only_the_agents_ports_are_refused(
        hooks_port in prop::option::of(prop_oneof![Just(DEFAULT_APP), Just(9000u16), any::<u16>()]),
        port in prop_oneof![Just(LEASE), Just(DEFAULT_APP), Just(9000u16), any::<u16>()],
        path in "(/[a-z0-9.%;]{0,8}){0,4}",
        junk in ".{0,32}",
    ) {
        let b = Borders::new(hooks_port);
        let _ = b.refusal(&junk, port);
        let refused = port == LEASE || (hooks_port == Some(port) && port != DEFAULT_APP);
        // Segments of at most 8 characters cannot spell a hook path.
        prop_assert_eq!(b.refusal(&path, port).is_some(), refused, "{} on {}", path, port);
        prop_assert_eq!(b.stream_refusal().is_some(), hooks_port == Some(DEFAULT_APP));
    }
}
