//! Standard Webhooks signing: secrets are `whsec_` + base64 of 32 random
//! bytes; the key is the decoded part; a signature is `v1,` + base64
//! HMAC-SHA256 over `<webhook-id>.<webhook-timestamp>.<body>`.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Prefix of every endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh endpoint secret.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(postmesh_kit::crypto::random_bytes(32)))
}

/// The HMAC key of a secret (the base64 after `whsec_`).
fn key_of(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret)).ok()
}

/// One `v1,<base64>` signature of `body` under `secret`; `None` when the
/// secret is not base64 (a stored secret always is).
pub fn sign(secret: &str, message_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_of(secret)?);
    let mut context = hmac::Context::with_key(&key);
    context.update(message_id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    Some(format!("v1,{}", STANDARD.encode(context.sign().as_ref())))
}

/// The `webhook-signature` header: one signature per secret, in the order
/// given (current first, then the previous one during an overlap),
/// space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets.into_iter().filter_map(|s| sign(s, message_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}
