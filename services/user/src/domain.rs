//! The user service's rules, without I/O: what a valid email, password and
//! name are, how secrets look and are hashed, and how TOTP codes are
//! checked.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use postmesh_kit::crypto::{constant_time_eq, random_bytes, random_token, sha256_hex};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (argon2 would take more, but nobody types this).
pub const MAX_PASSWORD_LEN: usize = 128;
/// Longest display, workspace and API key name.
pub const MAX_NAME_LEN: usize = 100;
/// Recovery codes issued when 2FA is turned on.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// A normalized email address (trimmed, lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Email {
    type Error = String;

    fn try_from(value: &str) -> Result<Self, String> {
        let value = value.trim().to_lowercase();
        if value.is_empty() {
            return Err("is required".into());
        }
        if value.len() > 254 {
            return Err("must be at most 254 characters".into());
        }
        let Some((local, domain)) = value.split_once('@') else {
            return Err("is not an email address (no @)".into());
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let domain_ok = domain.contains('.') && domain.split('.').all(label_ok);
        if local_ok && domain_ok { Ok(Self(value)) } else { Err("is not an email address".into()) }
    }
}

/// A password that met the policy. Never printed.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
    /// Checks the policy: length, and not a common or easily guessed
    /// password (zxcvbn's estimate, counting the user's own email and name).
    pub fn new(value: &str, user_inputs: &[&str]) -> Result<Self, String> {
        let chars = value.chars().count();
        if chars < MIN_PASSWORD_LEN {
            return Err(format!("must be at least {MIN_PASSWORD_LEN} characters"));
        }
        if chars > MAX_PASSWORD_LEN {
            return Err(format!("must be at most {MAX_PASSWORD_LEN} characters"));
        }
        let estimate = zxcvbn::zxcvbn(value, user_inputs);
        if (estimate.score() as u8) < 3 {
            let hint =
                estimate.feedback().and_then(|f| f.warning()).map(|w| format!(" ({w})")).unwrap_or_default();
            return Err(format!("is too common or easy to guess{hint}; use a longer phrase"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The argon2id hash (PHC string) of this password.
    pub fn hash(&self) -> String {
        Argon2::default()
            .hash_password(self.0.as_bytes())
            .expect("argon2id hashing with default parameters works")
            .to_string()
    }
}

/// Whether `password` matches the stored argon2 `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// A hash to verify against when the account does not exist, so unknown
/// emails take as long as wrong passwords.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| Password(random_token(24)).hash())
}

/// A trimmed, non-empty name without control characters, at most
/// [`MAX_NAME_LEN`] characters.
pub fn name(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("is required".into());
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_owned())
}

/// An IANA time zone name like `Europe/Berlin` or `UTC` (empty clears it).
pub fn time_zone(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 64
            && value.split('/').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c))
            }));
    if ok { Ok(value.to_owned()) } else { Err("is not a time zone name like Europe/Berlin".into()) }
}

/// A BCP 47 language tag like `en` or `pt-BR` (empty clears it).
pub fn locale(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 35
            && value.split('-').all(|part| {
                !part.is_empty() && part.len() <= 8 && part.chars().all(|c| c.is_ascii_alphanumeric())
            }));
    if ok { Ok(value.to_owned()) } else { Err("is not a language tag like en or pt-BR".into()) }
}

/// An https URL of at most 2048 characters (empty clears it).
pub fn avatar_url(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    if value.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    match value.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
            Ok(value.to_owned())
        }
        _ => Err("must be an https:// URL".into()),
    }
}

/// A new bearer secret and the hash stored for it.
pub struct NewSecret {
    /// Shown to its owner once.
    pub secret: String,
    /// What is stored and looked up.
    pub hash: String,
}

impl NewSecret {
    fn with_prefix(prefix: &str, random_len: usize) -> Self {
        let secret = format!("{prefix}{}", random_token(random_len));
        let hash = sha256_hex(secret.as_bytes());
        Self { secret, hash }
    }

    /// A refresh token: `pmr_` + 43 random characters (256 bits).
    pub fn refresh_token() -> Self {
        Self::with_prefix("pmr_", 43)
    }

    /// An API key: `pm_` + 40 random characters.
    pub fn api_key() -> Self {
        Self::with_prefix(postmesh_kit::auth::API_KEY_PREFIX, 40)
    }

    /// An invitation token: `pmi_` + 40 random characters.
    pub fn invitation() -> Self {
        Self::with_prefix("pmi_", 40)
    }
}

/// How an API key is listed: `pm_` and its first 8 random characters.
pub fn api_key_prefix(key: &str) -> String {
    key.chars().take(postmesh_kit::auth::API_KEY_PREFIX.len() + 8).collect()
}

/// Ten single-use recovery codes like `k3f9q-x7m2p`, with their hashes.
pub fn recovery_codes() -> Vec<NewSecret> {
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let raw = random_token(10).to_lowercase();
            let secret = format!("{}-{}", &raw[..5], &raw[5..]);
            NewSecret { hash: hash_recovery_code(&secret), secret }
        })
        .collect()
}

/// Hash of a recovery code, ignoring case, spaces and the dash.
pub fn hash_recovery_code(code: &str) -> String {
    let normalized: String =
        code.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
    sha256_hex(normalized.as_bytes())
}

/// TOTP per RFC 6238: SHA-1, 6 digits, 30-second steps, ±1 step of skew.
pub struct Totp {
    inner: totp_rs::Totp,
}

impl Totp {
    /// A new random 160-bit secret.
    pub fn generate_secret() -> Vec<u8> {
        random_bytes(20)
    }

    /// The TOTP for `secret`, labelled for authenticator apps.
    pub fn new(secret: Vec<u8>, account: &str) -> Self {
        let inner = totp_rs::Builder::new()
            .with_secret(secret)
            .with_issuer(Some("postmesh"))
            .with_account_name(account)
            .build_noncompliant();
        Self { inner }
    }

    /// The TOTP for a base32 secret (as shown at enrollment).
    pub fn from_base32(secret: &str, account: &str) -> Option<Self> {
        let secret = totp_rs::Secret::try_from_base32(secret).ok()?;
        Some(Self::new(secret.as_ref().to_vec(), account))
    }

    /// The secret in base32, for typing into an app.
    pub fn secret_base32(&self) -> String {
        self.inner.secret().to_base32()
    }

    /// The `otpauth://` URI for a QR code.
    pub fn uri(&self) -> String {
        self.inner.to_url().unwrap_or_default()
    }

    /// The time step `code` is valid for at `now` (±1 step), compared in
    /// constant time; `None` when it matches none. Steps at or before
    /// `last_used` are refused, so each code works once.
    pub fn verify(&self, code: &str, now: u64, last_used: Option<i64>) -> Option<i64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let current = (now / 30) as i64;
        let mut matched = None;
        for step in [current - 1, current, current + 1] {
            let expected = self.inner.generate(step.max(0) as u64 * 30).to_string();
            if constant_time_eq(expected.as_bytes(), code.as_bytes())
                && last_used.is_none_or(|last| step > last)
            {
                matched = Some(step);
            }
        }
        matched
    }

    /// The code for `time` (tests use it to act as the authenticator app).
    pub fn code_at(&self, time: u64) -> String {
        self.inner.generate(time).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(Email::try_from("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@-x.com",
            "a..b@example.com",
        ] {
            assert!(Email::try_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_must_be_long_and_uncommon() {
        assert!(Password::new("short", &[]).unwrap_err().contains("at least 12"));
        assert!(Password::new("password1234", &[]).unwrap_err().contains("too common"));
        assert!(Password::new("aaaaaaaaaaaaaaaa", &[]).is_err());
        assert!(
            Password::new("ada.lovelace@example.com", &["ada.lovelace@example.com"]).is_err(),
            "own email"
        );
        assert!(Password::new("correct horse battery staple", &[]).is_ok());
        assert!(Password::new(&"x".repeat(129), &[]).unwrap_err().contains("at most 128"));
    }

    #[test]
    fn hashes_verify_only_the_right_password() {
        let hash = Password::new("violet-ocean-lantern-42", &[]).unwrap().hash();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("violet-ocean-lantern-42", &hash));
        assert!(!verify_password("violet-ocean-lantern-43", &hash));
    }

    #[test]
    fn totp_accepts_one_step_of_skew_once() {
        let totp = Totp::new(vec![1; 20], "ada@example.com");
        let now = 1_800_000_000;
        let code = totp.code_at(now);
        let step = totp.verify(&code, now, None).expect("current code");
        assert_eq!(totp.verify(&totp.code_at(now - 30), now, None), Some(step - 1), "previous step");
        assert_eq!(totp.verify(&totp.code_at(now + 30), now, None), Some(step + 1), "next step");
        assert_eq!(totp.verify(&totp.code_at(now - 60), now, None), None, "two steps off");
        assert_eq!(totp.verify(&code, now, Some(step)), None, "a used code is refused");
        assert_eq!(totp.verify("12345", now, None), None);
        assert!(totp.uri().starts_with("otpauth://totp/"));
    }

    #[test]
    fn secrets_have_their_formats() {
        let key = NewSecret::api_key();
        assert!(key.secret.starts_with("pm_") && key.secret.len() == 43);
        assert_eq!(api_key_prefix(&key.secret).len(), 11);
        assert_eq!(key.hash, sha256_hex(key.secret.as_bytes()));
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(hash_recovery_code(&codes[0].secret.to_uppercase().replace('-', " ")), codes[0].hash);
    }
}
