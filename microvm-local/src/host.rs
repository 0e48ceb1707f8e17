//! What the host contributes to a MicroVM: its wall clock, fresh entropy, the
//! MicroVM's id, and timestamps in the API's form.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use microvm_protocol::run::Clock;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Bytes of host entropy sent with `/run` and `/resume`: comfortably above the
/// contract's minimum worth a reseed.
pub const ENTROPY_BYTES: usize = 48;
const _: () = assert!(ENTROPY_BYTES >= microvm_protocol::limits::MIN_ENTROPY_BYTES);

/// The host's wall clock, for `clock.unixTimeNanos`.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The host's wall clock as the `/run` and `/resume` envelopes carry it.
pub fn clock() -> Clock {
    Clock {
        unix_time_nanos: now_nanos(),
    }
}

pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // Zeros sent as "fresh" entropy would make every restored copy of a snapshot share
    // one random stream: with no randomness to give, the runner stops instead.
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        eprintln!("microvm-local: cannot read /dev/urandom for the guest's entropy: {e}");
        std::process::exit(255);
    }
    b
}

/// Fresh host randomness, base64 (standard alphabet, padded), for `entropy`.
pub fn entropy_b64() -> String {
    STANDARD.encode(random(ENTROPY_BYTES))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new MicroVM id in the platform's form, `mvm-` and a random UUID-shaped hex.
pub fn microvm_id() -> String {
    let h = hex(&random(16));
    format!(
        "mvm-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// RFC 3339, UTC, whole seconds (`2026-01-02T03:04:05Z`), as the API prints times.
pub fn rfc3339(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(now_nanos() / 1_000_000_000)
}

/// A guest CID for a new VM: 3 (the first a guest may have) up to 2^31, at random.
pub fn guest_cid() -> u32 {
    let b = random(4);
    3 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % ((1 << 31) - 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_whole_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn entropy_is_padded_standard_base64_of_enough_bytes() {
        let e = entropy_b64();
        assert_eq!(
            e.len(),
            64,
            "48 bytes are 64 base64 characters, no padding needed"
        );
        let back = STANDARD.decode(&e).unwrap();
        assert_eq!(back.len(), ENTROPY_BYTES);
        assert_ne!(entropy_b64(), e, "fresh each time");
        // The encoder the agent decodes with: standard alphabet, padded.
        assert_eq!(STANDARD.encode(b"\xfb\xff"), "+/8=");
    }

    #[test]
    fn microvm_ids_have_the_platform_shape() {
        let id = microvm_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts[0], "mvm");
        assert_eq!(
            parts[1..].iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id[4..].chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
