//! Token signing keys. Ed25519 private keys in PKCS#8 PEM files, listed in
//! `POSTMESH_AUTH_KEYS` (the first signs, all verify, so a new key can be
//! put first and the old one dropped once its tokens have expired), or one
//! generated under `<data_dir>/keys/` when none are configured. The key id
//! is the RFC 7638 thumbprint of the public key.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, base64url, read_or_create, sha256};

/// A public key as a JSON Web Key (RFC 8037 `OKP`/`Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Always `EdDSA`.
    pub alg: String,
}

impl Jwk {
    fn for_public_key(public: &[u8]) -> Self {
        let x = base64url(public);
        // RFC 7638: the required members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        Self {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: base64url(&sha256(canonical.as_bytes())),
            x,
            use_: "sig".into(),
            alg: "EdDSA".into(),
        }
    }

    /// The verification key, if this is an Ed25519 key.
    pub fn decoding_key(&self) -> Option<DecodingKey> {
        (self.kty == "OKP" && self.crv == "Ed25519").then(|| DecodingKey::from_ed_components(&self.x).ok())?
    }
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The keys a signing process holds.
pub struct KeyRing {
    signer: SigningKey,
    public: Vec<Jwk>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.public.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("KeyRing").field("signing_kid", &self.signer.kid).field("kids", &kids).finish()
    }
}

impl KeyRing {
    /// Loads the configured key files, or the generated dev key in
    /// `<data_dir>/keys/` when none are configured.
    pub fn load(configured: &[PathBuf], data_dir: &Path) -> Result<Self, CryptoError> {
        let pems: Vec<(String, String)> = if configured.is_empty() {
            let path = data_dir.join("keys").join("token-signing.pem");
            let pem = read_or_create(&path, generate_pem)?;
            vec![(path.display().to_string(), pem)]
        } else {
            configured
                .iter()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|pem| (path.display().to_string(), pem))
                        .map_err(|source| CryptoError::Io { path: path.display().to_string(), source })
                })
                .collect::<Result<_, _>>()?
        };
        let mut keys = Vec::new();
        for (name, pem) in &pems {
            let der = pem_to_der(pem).ok_or_else(|| CryptoError::InvalidKey {
                name: name.clone(),
                reason: "expected a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
            })?;
            let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| CryptoError::InvalidKey {
                name: name.clone(),
                reason: "not an Ed25519 private key".into(),
            })?;
            keys.push((der.clone(), Jwk::for_public_key(pair.public_key().as_ref())));
        }
        let (der, first) = keys[0].clone();
        Ok(Self {
            signer: SigningKey { kid: first.kid.clone(), encoding: EncodingKey::from_ed_der(&der) },
            public: keys.into_iter().map(|(_, jwk)| jwk).collect(),
        })
    }

    /// The public keys, signing key first (the JWKS).
    pub fn jwks(&self) -> &[Jwk] {
        &self.public
    }

    /// Id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        &self.signer.kid
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.signer.encoding
    }
}

/// A new Ed25519 key as PKCS#8 PEM.
pub fn generate_pem() -> String {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).expect("key generation works");
    let body = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ascii")).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    STANDARD.decode(body).ok().filter(|der| !der.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_persist_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load(&[], dir.path()).unwrap();
        let again = KeyRing::load(&[], dir.path()).unwrap();
        assert_eq!(first.signing_kid(), again.signing_kid(), "dev keeps its key across restarts");

        let old = dir.path().join("keys").join("token-signing.pem");
        let new = dir.path().join("new.pem");
        std::fs::write(&new, generate_pem()).unwrap();
        let rotated = KeyRing::load(&[new, old], dir.path()).unwrap();
        assert_ne!(rotated.signing_kid(), first.signing_kid(), "the first listed key signs");
        assert_eq!(rotated.jwks().len(), 2);
        assert!(rotated.jwks().iter().any(|k| k.kid == first.signing_kid()), "the old key still verifies");
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pem");
        std::fs::write(&path, "not a key").unwrap();
        let err = KeyRing::load(std::slice::from_ref(&path), dir.path()).unwrap_err().to_string();
        assert!(err.contains("broken.pem"), "{err}");
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its example key.
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(Jwk::for_public_key(&public).kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
