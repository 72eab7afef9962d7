//! Signature checks of inbound messages: Twitch EventSub (`sha256=` + hex
//! HMAC-SHA256 over id + timestamp + body) and Standard Webhooks (`v1,` +
//! base64 HMAC-SHA256 over `id.timestamp.body` with the decoded `whsec_`
//! key). Comparisons are constant time.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use postmesh_kit::crypto::constant_time_eq;

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context.sign().as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The `Twitch-Eventsub-Message-Signature` Twitch sends for a message.
pub fn eventsub_signature(secret: &[u8], message_id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret, &[message_id.as_bytes(), timestamp.as_bytes(), body])))
}

/// Whether `given` is the EventSub signature of the message.
pub fn eventsub_valid(secret: &[u8], message_id: &str, timestamp: &str, body: &[u8], given: &str) -> bool {
    let expected = eventsub_signature(secret, message_id, timestamp, body);
    // Hex digests are case-insensitive; Twitch sends lower case.
    constant_time_eq(expected.as_bytes(), given.trim().to_ascii_lowercase().as_bytes())
}

/// A new Standard Webhooks secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(postmesh_kit::crypto::random_bytes(32)))
}

/// The key bytes of a `whsec_` secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret)).ok()
}

/// The `v1,<base64>` signature of a Standard Webhooks message.
pub fn standard_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac))
}

/// Whether any of the space-separated signatures in `header` matches one
/// of `keys`.
pub fn standard_valid(keys: &[Vec<u8>], id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let expected: Vec<String> = keys.iter().map(|key| standard_signature(key, id, timestamp, body)).collect();
    let mut valid = false;
    for given in header.split_whitespace() {
        for wanted in &expected {
            // No early exit: every pair is compared.
            valid |= constant_time_eq(wanted.as_bytes(), given.as_bytes());
        }
    }
    valid
}
