//! Small cryptographic building blocks every service uses, all on aws-lc-rs:
//! random tokens, SHA-256, constant-time comparison, and [`Cipher`], the
//! AEAD (AES-256-GCM) for secrets kept at rest. Cipher keys carry an id so
//! they can rotate: the first key encrypts, every listed key decrypts.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Alphabet of generated tokens (base62: safe in URLs, headers and shells).
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A failure of the crypto layer. Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key in configuration or on disk is malformed.
    #[error("invalid key {name}: {reason}")]
    InvalidKey {
        /// Which key (file path or key id), never its value.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Sealed data is malformed, was tampered with, or its key is unknown.
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// `len` cryptographically random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    SystemRandom::new().fill(&mut out).expect("the system random source works");
    out
}

/// A random string of `len` base62 characters (≈5.95 bits each), without
/// modulo bias.
pub fn random_token(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in random_bytes(len * 2) {
            // 248 = 4 × 62: values above would favour the first symbols.
            if byte < 248 && out.len() < len {
                out.push(BASE62[(byte % 62) as usize] as char);
            }
        }
    }
    out
}

/// Lower-case hex SHA-256 of `data`: how postmesh stores refresh tokens,
/// API keys and other bearer secrets (lookups by hash, never by value).
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
    out
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    #[allow(deprecated)]
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Base64url without padding (JWK and token encodings).
pub fn base64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// AEAD for secrets at rest (TOTP seeds, platform credentials).
#[derive(Clone)]
pub struct Cipher {
    /// `(key id, key)`; the first encrypts.
    keys: Vec<(String, std::sync::Arc<LessSafeKey>)>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Cipher").field("key_ids", &ids).finish()
    }
}

impl Cipher {
    /// Keys written `id:base64(32 bytes)`, comma-separated; the first
    /// encrypts new data.
    pub fn from_spec(spec: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        for (index, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (id, encoded) = entry.split_once(':').ok_or_else(|| CryptoError::InvalidKey {
                name: format!("#{}", index + 1),
                reason: "expected `id:base64key`".into(),
            })?;
            let invalid =
                |reason: &str| CryptoError::InvalidKey { name: id.to_owned(), reason: reason.into() };
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(invalid("key ids are letters, digits, - and _"));
            }
            let raw = STANDARD.decode(encoded).map_err(|_| invalid("not base64"))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| invalid("must be 32 bytes"))?;
            keys.push((id.to_owned(), std::sync::Arc::new(LessSafeKey::new(unbound))));
        }
        if keys.is_empty() {
            return Err(CryptoError::InvalidKey {
                name: "encryption_keys".into(),
                reason: "no key given".into(),
            });
        }
        Ok(Self { keys })
    }

    /// The key file under `dir` (created with a new random key on first use):
    /// what `postmesh dev` uses when no keys are configured.
    pub fn load_or_generate(dir: &Path) -> Result<Self, CryptoError> {
        let path = dir.join("encryption.key");
        let spec = read_or_create(&path, || {
            format!("{}:{}\n", &random_token(8).to_ascii_lowercase(), STANDARD.encode(random_bytes(32)))
        })?;
        Self::from_spec(spec.trim())
    }

    /// Seals `plaintext`; `context` (e.g. `user:<id>:totp`) is bound to the
    /// ciphertext, so a sealed value copied elsewhere does not open.
    pub fn encrypt(&self, plaintext: &[u8], context: &str) -> String {
        let (id, key) = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes(NONCE_LEN).try_into().expect("nonce length");
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(context),
            &mut sealed,
        )
        .expect("AES-GCM sealing does not fail for in-memory data");
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&sealed);
        format!("v1.{id}.{}", URL_SAFE_NO_PAD.encode(blob))
    }

    /// Opens what [`Cipher::encrypt`] sealed with the same `context`.
    pub fn decrypt(&self, sealed: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Decrypt("unknown format".into()));
        };
        let (_, key) = self
            .keys
            .iter()
            .find(|(kid, _)| kid == id)
            .ok_or_else(|| CryptoError::Decrypt(format!("no key with id {id}")))?;
        let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Decrypt("not base64url".into()))?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt("too short".into()));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt("bad nonce".into()))?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| CryptoError::Decrypt("authentication failed".into()))?;
        Ok(plain.to_vec())
    }

    /// Id of the key that encrypts new data.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }
}

/// Reads `path`, or creates it (mode 0600) with `make()` when missing.
pub(crate) fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, CryptoError> {
    let io = |source| CryptoError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let text = make();
            write_private(path, &text).map_err(io)?;
            Ok(text)
        }
        Err(err) => Err(io(err)),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_base62_of_the_asked_length() {
        let a = random_token(40);
        let b = random_token(40);
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_values_open_only_with_their_context_and_keys() {
        let key = STANDARD.encode([7u8; 32]);
        let cipher = Cipher::from_spec(&format!("k1:{key}")).unwrap();
        let sealed = cipher.encrypt(b"JBSWY3DPEHPK3PXP", "user:1:totp");
        assert!(sealed.starts_with("v1.k1."));
        assert!(!sealed.contains("JBSWY3DP"));
        assert_eq!(cipher.decrypt(&sealed, "user:1:totp").unwrap(), b"JBSWY3DPEHPK3PXP");
        assert!(cipher.decrypt(&sealed, "user:2:totp").is_err(), "context is bound");

        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(cipher.decrypt(&tampered, "user:1:totp").is_err());

        // Rotation: a new key first still opens data sealed with the old one.
        let rotated = Cipher::from_spec(&format!("k2:{},k1:{key}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_eq!(rotated.decrypt(&sealed, "user:1:totp").unwrap(), b"JBSWY3DPEHPK3PXP");
        assert!(rotated.encrypt(b"x", "c").starts_with("v1.k2."));
    }

    #[test]
    fn bad_key_specs_are_named_without_their_value() {
        let err = Cipher::from_spec("k1:c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("k1") && err.contains("32 bytes"), "{err}");
        assert!(Cipher::from_spec("").is_err());
        assert!(Cipher::from_spec("nokey").is_err());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
