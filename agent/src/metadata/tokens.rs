//! IMDSv2 session tokens: issued by `PUT /latest/api/token` with a TTL, checked on
//! every other request. Plain data over a clock the caller passes in (monotonic
//! milliseconds), so expiry is tested without waiting.

use std::collections::HashMap;

/// `X-aws-ec2-metadata-token-ttl-seconds` must be within this (EC2's range).
pub const TTL_SECONDS: std::ops::RangeInclusive<u64> = 1..=21_600;
/// Tokens kept at once; the oldest go first beyond it (each is a few dozen bytes).
pub const MAX_TOKENS: usize = 4096;

#[derive(Debug, Default)]
pub struct Tokens {
    /// token -> monotonic expiry (ms).
    live: HashMap<String, u64>,
    pub issued: u64,
}

/// Why a token is refused (all are 401 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Unknown,
    Expired,
}

impl Tokens {
    /// A new token valid for `ttl_s` from `now_ms`, made of `random` (32 bytes).
    pub fn issue(&mut self, ttl_s: u64, now_ms: u64, random: [u8; 32]) -> String {
        self.live.retain(|_, exp| *exp > now_ms);
        if self.live.len() >= MAX_TOKENS {
            if let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(t, _)| t.clone())
            {
                self.live.remove(&oldest);
            }
        }
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        self.live.insert(token.clone(), now_ms + ttl_s * 1000);
        self.issued += 1;
        token
    }

    pub fn check(&self, token: Option<&str>, now_ms: u64) -> Result<(), Refused> {
        let token = token.ok_or(Refused::Missing)?;
        match self.live.get(token) {
            None => Err(Refused::Unknown),
            Some(exp) if *exp <= now_ms => Err(Refused::Expired),
            Some(_) => Ok(()),
        }
    }
}

/// A TTL header's value, or why it is refused (400).
pub fn parse_ttl(header: Option<&str>) -> Result<u64, String> {
    let v = header.ok_or("X-aws-ec2-metadata-token-ttl-seconds is required")?;
    match v.trim().parse::<u64>() {
        Ok(n) if TTL_SECONDS.contains(&n) => Ok(n),
        _ => Err(format!(
            "X-aws-ec2-metadata-token-ttl-seconds must be {}-{}, got {v:?}",
            TTL_SECONDS.start(),
            TTL_SECONDS.end()
        )),
    }
}

/// 32 bytes from the kernel's CSPRNG (reseeded by the agent at `/run` and `/resume`).
pub fn random() -> std::io::Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is
        // valid, writable and ours for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_exactly_its_ttl() {
        let mut t = Tokens::default();
        let tok = t.issue(2, 1000, [7; 32]);
        assert_eq!(tok.len(), 64);
        assert_eq!(t.check(Some(&tok), 1000), Ok(()));
        assert_eq!(t.check(Some(&tok), 2999), Ok(()));
        assert_eq!(t.check(Some(&tok), 3000), Err(Refused::Expired));
        assert_eq!(t.check(Some("nope"), 1000), Err(Refused::Unknown));
        assert_eq!(t.check(None, 1000), Err(Refused::Missing));
    }

    #[test]
    fn tokens_are_bounded_and_the_oldest_go_first() {
        let mut t = Tokens::default();
        let first = t.issue(10, 0, [0; 32]);
        for i in 1..MAX_TOKENS as u32 + 10 {
            let mut r = [0u8; 32];
            r[..4].copy_from_slice(&i.to_be_bytes());
            t.issue(100, 0, r);
        }
        assert!(t.live.len() <= MAX_TOKENS);
        assert_eq!(t.check(Some(&first), 1), Err(Refused::Unknown));
    }

    #[test]
    fn ttl_header_bounds() {
        assert_eq!(parse_ttl(Some("21600")), Ok(21600));
        assert_eq!(parse_ttl(Some("1")), Ok(1));
        for bad in [
            None,
            Some("0"),
            Some("21601"),
            Some("-1"),
            Some("x"),
            Some(""),
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random().unwrap(), random().unwrap());
    }
}
