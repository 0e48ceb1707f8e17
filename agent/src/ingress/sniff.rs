//! Telling a connection's protocol from its first bytes.

use std::time::Duration;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// The longest method token waited for: the longest registered method,
/// UPDATEREDIRECTREF, has 17 bytes.
const MAX_METHOD: usize = 20;
/// How long a client may take to send enough bytes to tell its protocol.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http1,
    H2c,
    Raw,
    /// Not enough bytes yet to tell.
    Unknown,
}

pub fn sniff(b: &[u8]) -> Kind {
    // HTTP/1 servers skip empty lines before a request line (RFC 9112 section 2.2),
    // so a request that starts with some must still be treated as HTTP.
    let start = b.iter().position(|c| !matches!(c, b'\r' | b'\n'));
    let b = match start {
        Some(i) => &b[i..],
        None if b.len() > 16 => return Kind::Raw,
        None => return Kind::Unknown,
    };
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Kind::H2c
        } else {
            Kind::Unknown
        };
    }
    // An HTTP/1 request line starts with a method token: upper-case letters (and `-`,
    // as in VERSION-CONTROL), a space. Until the space comes, how the bytes were cut
    // into reads must not decide: a token waits up to the longest method.
    let token = match b[0].is_ascii_uppercase() {
        true => b
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || **c == b'-')
            .count(),
        false => 0,
    };
    match b.get(token) {
        Some(b' ') if token > 0 && token <= MAX_METHOD => Kind::Http1,
        Some(_) => Kind::Raw,
        None if token <= MAX_METHOD => Kind::Unknown,
        None => Kind::Raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Kind::Http1);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Kind::Http1);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Kind::H2c);
        assert_eq!(sniff(b"PRI * HT"), Kind::Unknown);
        assert_eq!(sniff(b"GE"), Kind::Unknown);
        assert_eq!(sniff(b""), Kind::Unknown);
        assert_eq!(sniff(b"\x16\x03\x01"), Kind::Raw);
        assert_eq!(sniff(b"hello"), Kind::Raw);
        assert_eq!(sniff(b"PROPFIND"), Kind::Unknown, "8 bytes of a method");
        assert_eq!(sniff(b"PROPFIND / HTTP/1.1"), Kind::Http1);
        assert_eq!(sniff(b"VERSION-CONTROL / HTTP/1.1"), Kind::Http1);
        assert_eq!(
            sniff(b"ABCDEFGHIJKLMNOPQRSTU"),
            Kind::Raw,
            "longer than any method"
        );
        assert_eq!(sniff(b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1"), Kind::Raw);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH"), Kind::Raw);
        assert_eq!(sniff(b"\r\nGET / HTTP/1.1\r\n"), Kind::Http1);
        assert_eq!(sniff(b"\r\n\r\n"), Kind::Unknown);
        assert_eq!(sniff(&[b'\n'; 17]), Kind::Raw);
    }
}
