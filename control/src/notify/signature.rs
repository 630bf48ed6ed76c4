//! The `X-Rollout-Signature` header: `sha256=` and the lower-case hex HMAC-SHA256 of
//! the request body under the sidecar's secret (`--webhook-secret-file`), as GitHub
//! signs its webhooks. A receiver recomputes it over the raw body and compares in
//! constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-rollout-signature";

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
