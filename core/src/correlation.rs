//! Correlation ids: keep a valid incoming id, otherwise mint a UUIDv4.

/// Shortest and longest id kept from a client.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

/// A client-supplied id is kept when it is 8 to 128 characters of
/// `[A-Za-z0-9._:-]` (UUIDs, W3C trace ids, ULIDs, most vendor request ids).
pub fn is_valid(id: &str) -> bool {
    (MIN_LEN..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Formats 16 random bytes as an RFC 9562 version-4 UUID (lower-case hex).
pub fn uuid_v4(b: [u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        let byte = match i {
            6 => (byte & 0x0f) | 0x40, // version 4
            8 => (byte & 0x3f) | 0x80, // RFC variant
            _ => *byte,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid_v4([0; 16]);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
        assert!(is_valid(&u));
    }

    #[test]
    fn validity() {
        assert!(is_valid("3f2b8c1e-9a4d-4e7f-8b2a-1c3d5e7f9a0b"));
        assert!(is_valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid("short"));
        assert!(!is_valid("has space in it"));
        assert!(!is_valid("<script>alert(1)</script>"));
        assert!(!is_valid(&"a".repeat(129)));
    }
}
