//! [`JwtAuthenticator`] (feature `jwt`): a ready [`Authenticator`] for JSON
//! Web Tokens. HS256 is verified here, on `hmac` + `sha2`, with nothing
//! else in the build; RS256 needs feature `jwt-rsa` (it verifies through
//! `jsonwebtoken`'s pure-Rust crypto, which pulls `rsa` and the elliptic
//! curves, so HS256 users do not pay for it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::auth::{AuthError, Authenticator, Identity, RefreshError, UpgradeRequest};
use crate::ids::{IdError, UserId};

/// The default subprotocol a browser offers alongside its token.
pub const DEFAULT_SUBPROTOCOL: &str = "websocket-manager";
/// The prefix of the `Sec-WebSocket-Protocol` entry that carries the token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";
/// The longest token looked at, in bytes: anything longer is refused before
/// any decoding (a bearer token is a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The shortest HS256 secret [`JwtAuthenticator::hs256`] accepts, in bytes:
/// the size of the hash, as RFC 7518 (3.2) requires of an HMAC key. A
/// shorter secret (an empty one, a password) can be guessed offline from
/// any one token.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// The smallest RSA modulus `JwtAuthenticator::rs256_pem` (feature
/// `jwt-rsa`) accepts, in bits: RFC 7518 (3.3) requires 2048 or more.
pub const MIN_RSA_KEY_BITS: usize = 2048;

/// Why a [`JwtAuthenticator`] could not be built: the key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// The HS256 secret is shorter than [`MIN_HS256_SECRET_LEN`] bytes.
    #[error(
        "the HS256 secret is {len} bytes; at least {min} are required (RFC 7518, 3.2): use {min} random bytes or more"
    )]
    SecretTooShort {
        /// The length given, in bytes.
        len: usize,
        /// The minimum, [`MIN_HS256_SECRET_LEN`].
        min: usize,
    },
    /// The public key could not be loaded (`JwtAuthenticator::rs256_pem`,
    /// feature `jwt-rsa`).
    #[error("invalid RS256 public key: {0}")]
    Key(String),
    /// The RSA key's modulus is smaller than [`MIN_RSA_KEY_BITS`]
    /// (`JwtAuthenticator::rs256_pem`, feature `jwt-rsa`).
    #[error("the RSA key has {bits} bits; at least {min} are required (RFC 7518, 3.3)")]
    RsaKeyTooSmall {
        /// The modulus size, in bits.
        bits: usize,
        /// The minimum, [`MIN_RSA_KEY_BITS`].
        min: usize,
    },
}

/// Which of a token's three dot-separated segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPart {
    /// The JOSE header (`alg`, `typ`...).
    Header,
    /// The claims (`sub`, `exp`...).
    Payload,
    /// The signature.
    Signature,
}

impl std::fmt::Display for TokenPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenPart::Header => "header",
            TokenPart::Payload => "payload",
            TokenPart::Signature => "signature",
        })
    }
}

/// Why a token was refused (a key: [`JwtConfigError`]).
///
/// [`JwtAuthenticator::verify`] logs none of this to the client: the
/// upgrade answers a bare `401`, and the detail goes to the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three non-empty segments separated by dots, or longer than
    /// [`MAX_TOKEN_LEN`].
    #[error("a JWT is three base64url segments separated by dots, at most {MAX_TOKEN_LEN} bytes")]
    Malformed,
    /// A segment is not unpadded base64url.
    #[error("the token's {0} is not unpadded base64url")]
    Base64(TokenPart),
    /// The header or the payload is not a JSON object.
    #[error("the token's {0} is not a JSON object")]
    Json(TokenPart),
    /// The header's `alg` is not the one this authenticator was built for
    /// (`none`, or another family: algorithm confusion is refused here).
    #[error("the token's `alg` is {found:?}, this authenticator accepts only {expected}")]
    Algorithm {
        /// The `alg` of the token (empty when missing or not a string).
        found: String,
        /// The one algorithm accepted.
        expected: &'static str,
    },
    /// The header names critical extensions (`crit`), none of which is
    /// understood here, so the token must be refused (RFC 7515, 4.1.11).
    #[error("the token's header lists critical extensions (`crit`), none of which is supported")]
    CriticalHeader,
    /// The signature does not verify with the configured key.
    #[error("the signature does not match")]
    Signature,
    /// A required claim is absent.
    #[error("the `{0}` claim is missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type (`exp` and `nbf` are whole seconds,
    /// `sub` and `iss` strings, `aud` a string or a list of strings).
    #[error("the `{0}` claim has the wrong type")]
    InvalidClaim(&'static str),
    /// `exp` plus the leeway is not after now.
    #[error("the token expired (exp {exp}, now {now}, leeway {leeway_secs} s)")]
    Expired {
        /// The `exp` claim, seconds since the epoch.
        exp: u64,
        /// The verifier's clock, seconds since the epoch.
        now: u64,
        /// The tolerated clock skew.
        leeway_secs: u64,
    },
    /// `nbf` minus the leeway is still in the future.
    #[error("the token is not valid yet (nbf {nbf}, now {now}, leeway {leeway_secs} s)")]
    NotYetValid {
        /// The `nbf` claim, seconds since the epoch.
        nbf: u64,
        /// The verifier's clock, seconds since the epoch.
        now: u64,
        /// The tolerated clock skew.
        leeway_secs: u64,
    },
    /// `aud` names none of the configured audiences.
    #[error("the token's audience is not one this server accepts")]
    Audience,
    /// The token names an audience (`aud`, RFC 7519 4.1.3) and this
    /// authenticator has none configured: it was minted for some service,
    /// and nothing says that is this one. Configure
    /// [`audience`](JwtAuthenticator::audience), or opt out with
    /// [`ignore_audience`](JwtAuthenticator::ignore_audience).
    #[error(
        "the token names an audience (`aud`) but this server has none configured; configure one, or opt out with `ignore_audience()`"
    )]
    UnexpectedAudience,
    /// `iss` is not one of the configured issuers.
    #[error("the token's issuer is not one this server accepts")]
    Issuer,
    /// `sub` is not a valid [`UserId`] (empty, a control or an invisible
    /// format character, surrounding whitespace...).
    #[error("bad `sub` claim: {0}")]
    Subject(IdError),
}

/// What the `aud` claim must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AudiencePolicy {
    /// None configured: a token must not name one (RFC 7519 4.1.3).
    Unconfigured,
    /// `aud` must name one of these.
    OneOf(Vec<String>),
    /// `aud` is not looked at ([`JwtAuthenticator::ignore_audience`]).
    Ignored,
}

/// What verifies the signature.
#[derive(Clone)]
enum VerifyingKey {
    /// The keyed HMAC state, cloned per token (cheaper than re-keying).
    Hs256(Hmac<Sha256>),
    #[cfg(feature = "jwt-rsa")]
    Rs256(Box<jsonwebtoken::DecodingKey>),
}

impl VerifyingKey {
    fn algorithm(&self) -> &'static str {
        match self {
            VerifyingKey::Hs256(_) => "HS256",
            #[cfg(feature = "jwt-rsa")]
            VerifyingKey::Rs256(_) => "RS256",
        }
    }

    /// `signing_input` is `header.payload` as it appeared in the token.
    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        match self {
            VerifyingKey::Hs256(key) => {
                let mut mac = key.clone();
                mac.update(signing_input);
                // `verify_slice` compares in constant time (`subtle`).
                mac.verify_slice(signature).map_err(|_| JwtError::Signature)
            }
            #[cfg(feature = "jwt-rsa")]
            VerifyingKey::Rs256(key) => {
                let signature = BASE64URL_NOPAD.encode(signature);
                match jsonwebtoken::crypto::verify(
                    &signature,
                    signing_input,
                    key,
                    jsonwebtoken::Algorithm::RS256,
                ) {
                    Ok(true) => Ok(()),
                    Ok(false) | Err(_) => Err(JwtError::Signature),
                }
            }
        }
    }
}

/// A token that passed every check of [`JwtAuthenticator::decode`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// The `sub` claim.
    pub user_id: UserId,
    /// The `exp` claim, seconds since the epoch.
    pub exp: u64,
    /// Every claim of the payload, as sent.
    pub claims: Map<String, Value>,
}

/// Verifies a JWT on the upgrade request: the header's `alg` must be the
/// configured one (HS256, or RS256 with feature `jwt-rsa`; `none` and any
/// other algorithm are refused), then the signature, expiry (`exp` is
/// required; `nbf` is checked when present), audience and issuer; the user
/// is the `sub` claim, a valid [`UserId`].
///
/// Audience: with [`audience`](Self::audience) configured, `aud` must name
/// one of them; without, a token that names any audience is refused
/// ([`JwtError::UnexpectedAudience`]), since it was minted for another
/// service that may share the secret (RFC 7519 4.1.3; PyJWT and
/// `jsonwebtoken` do the same). [`ignore_audience`](Self::ignore_audience)
/// opts out explicitly.
///
/// The token is read from `Authorization: Bearer <jwt>`, or — since browsers
/// cannot set headers on a WebSocket — from `Sec-WebSocket-Protocol`:
/// `new WebSocket(url, ["websocket-manager", "bearer." + jwt])`. The server
/// then echoes `websocket-manager` (never the token entry); a client that
/// sends the token this way must offer that protocol too.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use websocket_manager::transport::{JwtAuthenticator, JwtError, encode_hs256};
///
/// const SECRET: &[u8] = b"32 random bytes or more, from a vault";
/// let authenticator = JwtAuthenticator::hs256(SECRET)?
///     .audience(["agent-api"])
///     .leeway(Duration::from_secs(5));
///
/// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let claims = serde_json::json!({"sub": "alice", "aud": "agent-api", "exp": now + 60});
/// let token = encode_hs256(&claims, SECRET);
/// assert_eq!(authenticator.decode(&token).unwrap().user_id.as_str(), "alice");
///
/// let forged = encode_hs256(&claims, b"another secret");
/// assert_eq!(authenticator.decode(&forged).unwrap_err(), JwtError::Signature);
///
/// // minted for another service that shares the secret
/// let billing = serde_json::json!({"sub": "alice", "aud": "billing", "exp": now + 60});
/// let billing = encode_hs256(&billing, SECRET);
/// assert_eq!(authenticator.decode(&billing).unwrap_err(), JwtError::Audience);
/// // without a configured audience, a token that names one is refused too
/// let unconfigured = JwtAuthenticator::hs256(SECRET)?;
/// assert_eq!(unconfigured.decode(&billing).unwrap_err(), JwtError::UnexpectedAudience);
/// # Ok::<(), websocket_manager::transport::JwtConfigError>(())
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: VerifyingKey,
    audiences: AudiencePolicy,
    issuers: Option<Vec<String>>,
    leeway_secs: u64,
    subprotocol: String,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("JwtAuthenticator")
            .field("algorithm", &self.key.algorithm())
            .field("audiences", &self.audiences)
            .field("issuers", &self.issuers)
            .field("leeway_secs", &self.leeway_secs)
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Tokens signed with HMAC-SHA256 and this shared secret: 32 random
    /// bytes or more ([`MIN_HS256_SECRET_LEN`]).
    ///
    /// ```
    /// use websocket_manager::transport::{JwtAuthenticator, JwtConfigError};
    /// assert!(JwtAuthenticator::hs256(&[7u8; 32]).is_ok());
    /// assert_eq!(
    ///     JwtAuthenticator::hs256(b"hunter2").unwrap_err(),
    ///     JwtConfigError::SecretTooShort { len: 7, min: 32 }
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// [`JwtConfigError::SecretTooShort`] for a secret shorter than
    /// [`MIN_HS256_SECRET_LEN`] bytes (an empty one included): anyone who
    /// can guess it can sign tokens for any user.
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtConfigError> {
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(JwtConfigError::SecretTooShort {
                len: secret.len(),
                min: MIN_HS256_SECRET_LEN,
            });
        }
        Ok(Self::with_key(VerifyingKey::Hs256(hmac_sha256(secret))))
    }

    /// Tokens signed with RSA-SHA256 (PKCS#1 v1.5), verified with this PEM
    /// public key. Feature `jwt-rsa`.
    ///
    /// # Errors
    ///
    /// [`JwtConfigError::Key`] when the PEM is not an RSA public key,
    /// [`JwtConfigError::RsaKeyTooSmall`] when its modulus has fewer than
    /// [`MIN_RSA_KEY_BITS`] bits.
    #[cfg(feature = "jwt-rsa")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt-rsa")))]
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Self, JwtConfigError> {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem)
            .map_err(|error| JwtConfigError::Key(error.to_string()))?;
        let bits = rsa_modulus_bits(&key)?;
        if bits < MIN_RSA_KEY_BITS {
            return Err(JwtConfigError::RsaKeyTooSmall {
                bits,
                min: MIN_RSA_KEY_BITS,
            });
        }
        Ok(Self::with_key(VerifyingKey::Rs256(Box::new(key))))
    }

    fn with_key(key: VerifyingKey) -> Self {
        JwtAuthenticator {
            key,
            audiences: AudiencePolicy::Unconfigured,
            issuers: None,
            leeway_secs: 0,
            subprotocol: DEFAULT_SUBPROTOCOL.to_owned(),
        }
    }

    /// Requires the `aud` claim to name one of these audiences (a token
    /// without `aud` is refused). Replaces an earlier
    /// [`ignore_audience`](Self::ignore_audience).
    pub fn audience<I, S>(mut self, audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.audiences =
            AudiencePolicy::OneOf(audiences.into_iter().map(|a| a.to_string()).collect());
        self
    }

    /// Accepts a token whatever its `aud` claim says, or without one. By
    /// default (no [`audience`](Self::audience)) a token that names an
    /// audience is refused, since it was minted for some other service;
    /// call this only when every service that holds the secret may use
    /// every token. Replaces an earlier [`audience`](Self::audience).
    ///
    /// ```
    /// use websocket_manager::transport::{JwtAuthenticator, encode_hs256};
    /// const SECRET: &[u8] = b"32 random bytes or more, from a vault";
    /// let token = encode_hs256(&serde_json::json!({"sub": "alice", "aud": "billing", "exp": u64::MAX / 2}), SECRET);
    /// assert!(JwtAuthenticator::hs256(SECRET)?.decode(&token).is_err());
    /// assert!(JwtAuthenticator::hs256(SECRET)?.ignore_audience().decode(&token).is_ok());
    /// # Ok::<(), websocket_manager::transport::JwtConfigError>(())
    /// ```
    pub fn ignore_audience(mut self) -> Self {
        self.audiences = AudiencePolicy::Ignored;
        self
    }

    /// Requires the `iss` claim to be one of these issuers.
    pub fn issuer<I, S>(mut self, issuers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.issuers = Some(issuers.into_iter().map(|i| i.to_string()).collect());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default none), in whole
    /// seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// The application subprotocol echoed to browsers (default
    /// [`DEFAULT_SUBPROTOCOL`]).
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = protocol.into();
        self
    }

    /// Verifies a token and returns its `sub`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Unauthorized`] for any [`JwtError`] of
    /// [`decode`](Self::decode).
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.decode(token)
            .map(|verified| verified.user_id)
            .map_err(unauthorized)
    }

    /// Verifies a token: header, signature, then claims, in that order
    /// (nothing of the payload is trusted before the signature holds).
    ///
    /// # Errors
    ///
    /// The first [`JwtError`] found.
    pub fn decode(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        self.decode_at(token, unix_now())
    }

    fn decode_at(&self, token: &str, now: u64) -> Result<VerifiedToken, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(JwtError::Malformed);
        };
        // an empty signature is not malformed: it is what `alg: none`
        // sends, and gets the clearer algorithm error below
        if header.is_empty() || payload.is_empty() {
            return Err(JwtError::Malformed);
        }

        let header_object = json_object(header, TokenPart::Header)?;
        let expected = self.key.algorithm();
        match header_object.get("alg") {
            Some(Value::String(alg)) if alg == expected => {}
            found => {
                return Err(JwtError::Algorithm {
                    found: found.and_then(Value::as_str).unwrap_or_default().to_owned(),
                    expected,
                });
            }
        }
        if header_object.contains_key("crit") {
            return Err(JwtError::CriticalHeader);
        }
        let signature = base64url(signature, TokenPart::Signature)?;
        let signing_input_len = header.len() + 1 + payload.len();
        self.key
            .verify(&token.as_bytes()[..signing_input_len], &signature)?;

        let claims = json_object(payload, TokenPart::Payload)?;
        self.check_claims(claims, now)
    }

    fn check_claims(
        &self,
        claims: Map<String, Value>,
        now: u64,
    ) -> Result<VerifiedToken, JwtError> {
        let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(self.leeway_secs) {
            return Err(JwtError::Expired {
                exp,
                now,
                leeway_secs: self.leeway_secs,
            });
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")?
            && nbf > now.saturating_add(self.leeway_secs)
        {
            return Err(JwtError::NotYetValid {
                nbf,
                now,
                leeway_secs: self.leeway_secs,
            });
        }
        match &self.audiences {
            AudiencePolicy::Ignored => {}
            AudiencePolicy::Unconfigured => {
                // present at all (even `null` or `[]`): PyJWT's rule too
                if claims.contains_key("aud") {
                    return Err(JwtError::UnexpectedAudience);
                }
            }
            AudiencePolicy::OneOf(accepted) => check_audience(&claims, accepted)?,
        }
        if let Some(accepted) = &self.issuers {
            let iss = match claims.get("iss") {
                None => return Err(JwtError::MissingClaim("iss")),
                Some(iss) => iss.as_str().ok_or(JwtError::InvalidClaim("iss"))?,
            };
            if !accepted.iter().any(|a| a == iss) {
                return Err(JwtError::Issuer);
            }
        }
        let subject = match claims.get("sub") {
            None => return Err(JwtError::MissingClaim("sub")),
            Some(sub) => sub.as_str().ok_or(JwtError::InvalidClaim("sub"))?,
        };
        let user_id = UserId::new(subject).map_err(JwtError::Subject)?;
        Ok(VerifiedToken {
            user_id,
            exp,
            claims,
        })
    }
}

/// The size of an RSA public key's modulus, in bits. The key is parsed as
/// `jsonwebtoken` will parse it to verify (PKCS#1 DER), so a PEM whose
/// content is not an RSA key is refused here, not at the first token.
#[cfg(feature = "jwt-rsa")]
fn rsa_modulus_bits(key: &jsonwebtoken::DecodingKey) -> Result<usize, JwtConfigError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let public = match key.kind() {
        jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => {
            rsa::RsaPublicKey::from_pkcs1_der(der)
                .map_err(|error| JwtConfigError::Key(error.to_string()))?
        }
        jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|error| JwtConfigError::Key(error.to_string()))?,
    };
    Ok(public.n().bits())
}

/// `aud` (a string or a list of strings) names one of `accepted`.
fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), JwtError> {
    let named = match claims.get("aud") {
        None => return Err(JwtError::MissingClaim("aud")),
        Some(Value::String(aud)) => accepted.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => {
            let mut named = false;
            for aud in auds {
                let aud = aud.as_str().ok_or(JwtError::InvalidClaim("aud"))?;
                named |= accepted.iter().any(|a| a == aud);
            }
            named
        }
        Some(_) => return Err(JwtError::InvalidClaim("aud")),
    };
    if named {
        Ok(())
    } else {
        Err(JwtError::Audience)
    }
}

/// Signs `claims` as an HS256 JWT with `secret`: for tests, demos and a
/// server that issues its own tokens. `claims` should be a JSON object with
/// at least `sub` and `exp` for [`JwtAuthenticator`] to accept it. It signs
/// with any secret, but only one of [`MIN_HS256_SECRET_LEN`] bytes or more
/// is accepted by [`JwtAuthenticator::hs256`].
///
/// ```
/// use websocket_manager::transport::{JwtAuthenticator, encode_hs256};
/// const SECRET: &[u8] = b"32 random bytes or more, from a vault";
/// let token = encode_hs256(&serde_json::json!({"sub": "alice", "exp": u64::MAX / 2}), SECRET);
/// assert_eq!(JwtAuthenticator::hs256(SECRET)?.decode(&token).unwrap().user_id.as_str(), "alice");
/// # Ok::<(), websocket_manager::transport::JwtConfigError>(())
/// ```
pub fn encode_hs256(claims: &Value, secret: &[u8]) -> String {
    let header = BASE64URL_NOPAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let mut mac = hmac_sha256(secret);
    mac.update(signing_input.as_bytes());
    let signature = BASE64URL_NOPAD.encode(&mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    // RFC 2104's key step, so that keying is infallible: a key longer than
    // the block is hashed, then the key is zero-padded to the block size.
    // (`new_from_slice` does the same but returns a `Result`.)
    let mut key = hmac::digest::Key::<Hmac<Sha256>>::default();
    if secret.len() > key.len() {
        let digest = Sha256::digest(secret);
        key[..digest.len()].copy_from_slice(&digest);
    } else {
        key[..secret.len()].copy_from_slice(secret);
    }
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&key)
}

fn base64url(segment: &str, part: TokenPart) -> Result<Vec<u8>, JwtError> {
    // strict: no padding, no other alphabet, no stray trailing bits
    BASE64URL_NOPAD
        .decode(segment.as_bytes())
        .map_err(|_| JwtError::Base64(part))
}

fn json_object(segment: &str, part: TokenPart) -> Result<Map<String, Value>, JwtError> {
    serde_json::from_slice(&base64url(segment, part)?).map_err(|_| JwtError::Json(part))
}

/// A NumericDate claim in whole seconds, `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    claims
        .get(name)
        .map(|value| value.as_u64().ok_or(JwtError::InvalidClaim(name)))
        .transpose()
}

fn unix_now() -> u64 {
    // a clock before 1970 counts as 1970: every `exp` is then in the future
    // only if it really is after the epoch, and tokens stay verifiable
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl JwtAuthenticator {
    /// When a connection authenticated with a token of this `exp` must end.
    fn expiry_of(&self, exp: u64) -> Option<SystemTime> {
        // the live connection is closed when the token stops being valid;
        // an `exp` beyond what the clock can represent never comes
        UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(self.leeway_secs)))
    }
}

fn unauthorized(error: JwtError) -> AuthError {
    AuthError::Unauthorized(format!("invalid token: {error}").into())
}

#[async_trait::async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, request: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
        let offered_app_protocol = request
            .offered_protocols()
            .any(|protocol| protocol == self.subprotocol);
        let token = match request.bearer_token() {
            Some(token) => token,
            None => {
                let token = request
                    .offered_protocols()
                    .find_map(|protocol| protocol.strip_prefix(TOKEN_PROTOCOL_PREFIX))
                    .ok_or(AuthError::Unauthorized("no bearer token".into()))?;
                if !offered_app_protocol {
                    return Err(AuthError::Unauthorized(
                        format!(
                            "a token sent as a subprotocol needs the `{}` subprotocol offered too",
                            self.subprotocol
                        )
                        .into(),
                    ));
                }
                token
            }
        };
        let verified = self.decode(token).map_err(unauthorized)?;
        let mut identity = Identity::new(verified.user_id);
        identity.expires_at = self.expiry_of(verified.exp);
        if offered_app_protocol {
            identity.subprotocol = Some(self.subprotocol.clone());
        }
        // No metadata: a one-entry map is a 640-byte B-tree node, kept by
        // the session and by the manager's connection for its whole life.
        Ok(identity)
    }

    /// Verifies the new token exactly as at the upgrade; it must name the
    /// same user.
    async fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, RefreshError> {
        let verified = self.decode(token).map_err(|error| match error {
            JwtError::Expired { .. } => RefreshError::Expired,
            other => RefreshError::Invalid(other.to_string().into()),
        })?;
        if verified.user_id != current.user_id {
            return Err(RefreshError::OtherUser);
        }
        let mut identity = current.clone();
        identity.expires_at = self.expiry_of(verified.exp);
        Ok(identity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderMap, Uri};
    use serde_json::json;

    const SECRET: &[u8] = b"test secret, long enough for HS256";
    /// The verifier's clock in the tests that pin it.
    const NOW: u64 = 1_700_000_000;

    fn b64(bytes: &[u8]) -> String {
        BASE64URL_NOPAD.encode(bytes)
    }

    /// `header.payload.signature` from raw JSON texts, HMAC-signed with `secret`.
    fn signed(header: &str, payload: &str, secret: &[u8]) -> String {
        with_signature(
            &format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes())),
            secret,
        )
    }

    /// `input` (`header.payload`, as encoded) and its HMAC signature.
    fn with_signature(input: &str, secret: &[u8]) -> String {
        let mut mac = hmac_sha256(secret);
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    fn valid_claims() -> Value {
        json!({"sub": "alice", "exp": NOW + 60})
    }

    fn decode(authenticator: &JwtAuthenticator, token: &str) -> Result<VerifiedToken, JwtError> {
        authenticator.decode_at(token, NOW)
    }

    fn in_one_hour() -> u64 {
        unix_now() + 3600
    }

    async fn authenticate(
        authenticator: &JwtAuthenticator,
        headers: &[(&str, &str)],
    ) -> Result<Identity, AuthError> {
        let uri: Uri = "/ws".parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        authenticator
            .authenticate(&UpgradeRequest::new(&uri, &map))
            .await
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hmac_keying_matches_rfc_4231() {
        // test case 2 (a short key) and 6 (a key longer than the block,
        // hashed first): the infallible keying must equal HMAC's own
        let cases: [(&[u8], &[u8], &str); 2] = [
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, expected) in cases {
            let mut mac = hmac_sha256(key);
            mac.update(data);
            assert_eq!(mac.finalize().into_bytes()[..], hex(expected));
        }
    }

    #[test]
    fn a_valid_token_yields_its_subject_expiry_and_claims() {
        let token = encode_hs256(
            &json!({"sub": "alice", "exp": NOW + 60, "role": "x"}),
            SECRET,
        );
        let verified = decode(&JwtAuthenticator::hs256(SECRET).unwrap(), &token).unwrap();
        assert_eq!(verified.user_id.as_str(), "alice");
        assert_eq!(verified.exp, NOW + 60);
        assert_eq!(verified.claims["role"], "x");
    }

    #[test]
    fn a_wrong_secret_or_a_tampered_payload_fails_the_signature() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let forged = encode_hs256(&valid_claims(), b"another secret entirely");
        assert_eq!(
            decode(&authenticator, &forged).unwrap_err(),
            JwtError::Signature
        );

        let genuine = encode_hs256(&valid_claims(), SECRET);
        let other = encode_hs256(&json!({"sub": "mallory", "exp": NOW + 60}), SECRET);
        let [header, _, signature]: [&str; 3] =
            genuine.split('.').collect::<Vec<_>>().try_into().unwrap();
        let swapped_payload = other.split('.').nth(1).unwrap();
        let tampered = format!("{header}.{swapped_payload}.{signature}");
        assert_eq!(
            decode(&authenticator, &tampered).unwrap_err(),
            JwtError::Signature
        );

        // a prefix of the right signature is not the signature
        let short = BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap();
        let truncated = format!(
            "{header}.{}.{}",
            genuine.split('.').nth(1).unwrap(),
            b64(&short[..31])
        );
        assert_eq!(
            decode(&authenticator, &truncated).unwrap_err(),
            JwtError::Signature
        );
    }

    #[test]
    fn alg_none_and_every_other_algorithm_are_refused_before_the_signature() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let claims = valid_claims().to_string();
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims.as_bytes()));
        // `none`, with and without a signature, in any case
        for token in [
            unsigned,
            signed(r#"{"alg":"none"}"#, &claims, SECRET),
            signed(r#"{"alg":"None"}"#, &claims, SECRET),
            signed(r#"{"alg":"hs256"}"#, &claims, SECRET),
            // the same secret under another HMAC or an asymmetric label
            signed(r#"{"alg":"HS384"}"#, &claims, SECRET),
            signed(r#"{"alg":"RS256"}"#, &claims, SECRET),
        ] {
            let error = decode(&authenticator, &token).unwrap_err();
            assert!(
                matches!(&error, JwtError::Algorithm { expected: "HS256", found } if found != "HS256"),
                "{token}: {error:?}"
            );
        }
        let missing = signed(r#"{"typ":"JWT"}"#, &claims, SECRET);
        assert_eq!(
            decode(&authenticator, &missing).unwrap_err(),
            JwtError::Algorithm {
                found: String::new(),
                expected: "HS256"
            }
        );
        let critical = signed(r#"{"alg":"HS256","crit":["exp"]}"#, &claims, SECRET);
        assert_eq!(
            decode(&authenticator, &critical).unwrap_err(),
            JwtError::CriticalHeader
        );
    }

    #[test]
    fn expiry_and_not_before_honour_the_leeway() {
        let strict = JwtAuthenticator::hs256(SECRET).unwrap();
        let lenient = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .leeway(Duration::from_secs(5));
        let expired = encode_hs256(&json!({"sub": "a", "exp": NOW - 1}), SECRET);
        let expiring_now = encode_hs256(&json!({"sub": "a", "exp": NOW}), SECRET);
        for token in [&expired, &expiring_now] {
            assert!(matches!(
                decode(&strict, token).unwrap_err(),
                JwtError::Expired {
                    now: NOW,
                    leeway_secs: 0,
                    ..
                }
            ));
        }
        assert!(decode(&lenient, &expired).is_ok());
        let long_expired = encode_hs256(&json!({"sub": "a", "exp": NOW - 5}), SECRET);
        assert!(matches!(
            decode(&lenient, &long_expired),
            Err(JwtError::Expired { .. })
        ));

        let early = encode_hs256(
            &json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 3}),
            SECRET,
        );
        assert_eq!(
            decode(&strict, &early).unwrap_err(),
            JwtError::NotYetValid {
                nbf: NOW + 3,
                now: NOW,
                leeway_secs: 0
            }
        );
        assert!(decode(&lenient, &early).is_ok());
        let started = encode_hs256(&json!({"sub": "a", "exp": NOW + 60, "nbf": NOW}), SECRET);
        assert!(decode(&strict, &started).is_ok());
    }

    #[test]
    fn malformed_tokens_get_typed_errors() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let good = encode_hs256(&valid_claims(), SECRET);
        let [header, payload, signature]: [&str; 3] =
            good.split('.').collect::<Vec<_>>().try_into().unwrap();
        let cases = [
            (String::new(), JwtError::Malformed),
            ("not-a-jwt".to_owned(), JwtError::Malformed),
            (format!("{header}.{payload}"), JwtError::Malformed),
            (format!("{good}.{signature}"), JwtError::Malformed),
            (format!(".{payload}.{signature}"), JwtError::Malformed),
            ("a".repeat(MAX_TOKEN_LEN + 1), JwtError::Malformed),
            // padding, the standard alphabet, stray trailing bits
            (
                format!("{header}=.{payload}.{signature}"),
                JwtError::Base64(TokenPart::Header),
            ),
            (
                format!("{header}.{payload}.{signature}="),
                JwtError::Base64(TokenPart::Signature),
            ),
            (
                format!(
                    "{header}.{payload}.{}",
                    signature.replace('_', "/").replace('-', "+") + "+"
                ),
                JwtError::Base64(TokenPart::Signature),
            ),
            (
                format!("YR.{payload}.{signature}"),
                JwtError::Base64(TokenPart::Header),
            ),
            (
                format!("{}.{payload}.{signature}", b64(b"[1]")),
                JwtError::Json(TokenPart::Header),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(
                decode(&authenticator, &token).unwrap_err(),
                expected,
                "{token}"
            );
        }
        // a signed payload that is not JSON, or not base64url
        let not_json = with_signature(&format!("{header}.{}", b64(b"not json")), SECRET);
        assert_eq!(
            decode(&authenticator, &not_json).unwrap_err(),
            JwtError::Json(TokenPart::Payload)
        );
        let padded = with_signature(&format!("{header}.{payload}="), SECRET);
        assert_eq!(
            decode(&authenticator, &padded).unwrap_err(),
            JwtError::Base64(TokenPart::Payload)
        );
    }

    #[test]
    fn claims_of_the_wrong_shape_are_named() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let cases = [
            (json!({"sub": "a"}), JwtError::MissingClaim("exp")),
            (
                json!({"sub": "a", "exp": "soon"}),
                JwtError::InvalidClaim("exp"),
            ),
            (
                json!({"sub": "a", "exp": -1}),
                JwtError::InvalidClaim("exp"),
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "nbf": 1.5}),
                JwtError::InvalidClaim("nbf"),
            ),
            (json!({"exp": NOW + 60}), JwtError::MissingClaim("sub")),
            (
                json!({"sub": 42, "exp": NOW + 60}),
                JwtError::InvalidClaim("sub"),
            ),
        ];
        for (claims, expected) in cases {
            let token = encode_hs256(&claims, SECRET);
            assert_eq!(
                decode(&authenticator, &token).unwrap_err(),
                expected,
                "{claims}"
            );
        }
        let empty_sub = encode_hs256(&json!({"sub": "", "exp": NOW + 60}), SECRET);
        assert!(matches!(
            decode(&authenticator, &empty_sub),
            Err(JwtError::Subject(IdError::Empty { .. }))
        ));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let authenticator = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .audience(["agent-api"])
            .issuer(["https://issuer.example"]);
        let iss = "https://issuer.example";
        let with = |claims: Value| encode_hs256(&claims, SECRET);
        for accepted in [
            with(json!({"sub": "a", "exp": NOW + 60, "aud": "agent-api", "iss": iss})),
            with(json!({"sub": "a", "exp": NOW + 60, "aud": ["billing", "agent-api"], "iss": iss})),
        ] {
            assert!(decode(&authenticator, &accepted).is_ok());
        }
        let cases = [
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "billing", "iss": iss}),
                JwtError::Audience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": [], "iss": iss}),
                JwtError::Audience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "iss": iss}),
                JwtError::MissingClaim("aud"),
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": 7, "iss": iss}),
                JwtError::InvalidClaim("aud"),
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "agent-api"}),
                JwtError::MissingClaim("iss"),
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "agent-api", "iss": "other"}),
                JwtError::Issuer,
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                decode(&authenticator, &with(claims.clone())).unwrap_err(),
                expected,
                "{claims}"
            );
        }
        // not configured: not required
        assert!(
            decode(
                &JwtAuthenticator::hs256(SECRET).unwrap(),
                &with(valid_claims())
            )
            .is_ok()
        );
    }

    #[test]
    fn short_secrets_are_refused_at_construction() {
        for len in [0, 1, 16, 31] {
            assert_eq!(
                JwtAuthenticator::hs256(&vec![b'k'; len]).unwrap_err(),
                JwtConfigError::SecretTooShort { len, min: 32 },
                "{len} bytes"
            );
        }
        let error = JwtAuthenticator::hs256(b"").unwrap_err().to_string();
        assert!(error.contains("0 bytes; at least 32"), "{error}");
        // 32 bytes is the minimum, and a token signed with it verifies
        let secret = [b'k'; 32];
        let authenticator = JwtAuthenticator::hs256(&secret).unwrap();
        let token = encode_hs256(&valid_claims(), &secret);
        assert_eq!(
            decode(&authenticator, &token).unwrap().user_id.as_str(),
            "alice"
        );
    }

    #[test]
    fn a_token_naming_an_audience_needs_one_configured_or_an_explicit_opt_out() {
        let with = |claims: Value| encode_hs256(&claims, SECRET);
        let unconfigured = JwtAuthenticator::hs256(SECRET).unwrap();
        // minted for another service that shares the secret; any shape of `aud`
        for aud in [json!("billing"), json!(["billing"]), json!([]), Value::Null] {
            let token = with(json!({"sub": "a", "exp": NOW + 60, "aud": aud}));
            assert_eq!(
                decode(&unconfigured, &token).unwrap_err(),
                JwtError::UnexpectedAudience,
                "{aud}"
            );
        }
        let billing = with(json!({"sub": "a", "exp": NOW + 60, "aud": "billing"}));
        let error = decode(&unconfigured, &billing).unwrap_err().to_string();
        assert!(error.contains("ignore_audience()"), "{error}");
        // the explicit opt-out takes any audience, or none
        let ignoring = JwtAuthenticator::hs256(SECRET).unwrap().ignore_audience();
        assert!(decode(&ignoring, &billing).is_ok());
        assert!(decode(&ignoring, &with(valid_claims())).is_ok());
        // a configured audience that does not match is still refused
        let configured = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .audience(["agent-api"]);
        assert_eq!(
            decode(&configured, &billing).unwrap_err(),
            JwtError::Audience
        );
        // the last call decides
        let reconfigured = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .ignore_audience()
            .audience(["agent-api"]);
        assert_eq!(
            decode(&reconfigured, &billing).unwrap_err(),
            JwtError::Audience
        );
        assert!(
            decode(&configured.ignore_audience(), &billing).is_ok(),
            "ignore_audience after audience"
        );
    }

    #[test]
    fn a_lookalike_subject_is_refused_naming_the_code_point() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        for (sub, code) in [
            ("alice\u{200B}", "U+200B"),
            ("\u{202E}ecila", "U+202E"),
            ("alice ", "U+0020"),
        ] {
            let token = encode_hs256(&json!({"sub": sub, "exp": NOW + 60}), SECRET);
            let error = decode(&authenticator, &token).unwrap_err();
            assert!(matches!(error, JwtError::Subject(_)), "{sub:?}: {error:?}");
            assert!(error.to_string().contains(code), "{error}");
        }
        for sub in ["josé", "用户"] {
            let token = encode_hs256(&json!({"sub": sub, "exp": NOW + 60}), SECRET);
            assert_eq!(
                decode(&authenticator, &token).unwrap().user_id.as_str(),
                sub
            );
        }
    }

    #[tokio::test]
    async fn hs256_bearer_header_yields_the_subject() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let token = encode_hs256(&json!({"sub": "alice", "exp": in_one_hour()}), SECRET);
        let identity = authenticate(
            &authenticator,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap();
        assert_eq!(identity.user_id.as_str(), "alice");
        assert_eq!(identity.subprotocol, None);
        let forged = encode_hs256(&json!({"sub": "alice", "exp": in_one_hour()}), b"other");
        let refused = authenticate(
            &authenticator,
            &[("authorization", &format!("Bearer {forged}"))],
        )
        .await;
        assert!(
            matches!(refused, Err(AuthError::Unauthorized(_))),
            "{refused:?}"
        );
        assert!(matches!(
            authenticate(&authenticator, &[]).await,
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn the_identity_expires_with_the_token_plus_the_leeway() {
        let exp = in_one_hour();
        let token = encode_hs256(&json!({"sub": "alice", "exp": exp}), SECRET);
        let bearer = format!("Bearer {token}");
        let header = [("authorization", bearer.as_str())];
        let strict = authenticate(&JwtAuthenticator::hs256(SECRET).unwrap(), &header)
            .await
            .unwrap();
        assert_eq!(
            strict.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp))
        );
        let lenient = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .leeway(Duration::from_secs(30));
        let lenient = authenticate(&lenient, &header).await.unwrap();
        assert_eq!(
            lenient.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 30))
        );
    }

    #[tokio::test]
    async fn a_refresh_needs_a_valid_unexpired_token_of_the_same_user() {
        let authenticator = JwtAuthenticator::hs256(SECRET)
            .unwrap()
            .leeway(Duration::from_secs(5));
        let exp = in_one_hour();
        let mut current = Identity::new(UserId::new("alice").unwrap());
        current.subprotocol = Some(DEFAULT_SUBPROTOCOL.to_owned());
        let fresh = encode_hs256(&json!({"sub": "alice", "exp": exp}), SECRET);
        let refreshed = authenticator.refresh(&current, &fresh).await.unwrap();
        assert_eq!(refreshed.user_id, current.user_id);
        assert_eq!(refreshed.subprotocol, current.subprotocol);
        assert_eq!(
            refreshed.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 5))
        );
        let other = encode_hs256(&json!({"sub": "mallory", "exp": exp}), SECRET);
        let forged = encode_hs256(&json!({"sub": "alice", "exp": exp}), b"not the secret");
        let expired = encode_hs256(&json!({"sub": "alice", "exp": unix_now() - 60}), SECRET);
        for (token, reason) in [
            (other.as_str(), "other user"),
            (forged.as_str(), "invalid token"),
            ("garbage", "invalid token"),
            (expired.as_str(), "expired"),
        ] {
            let refused = authenticator.refresh(&current, token).await.unwrap_err();
            assert_eq!(refused.reason(), reason, "{refused}");
        }
    }

    #[tokio::test]
    async fn token_in_subprotocol_echoes_the_app_protocol_only() {
        let authenticator = JwtAuthenticator::hs256(SECRET).unwrap();
        let token = encode_hs256(&json!({"sub": "carol", "exp": in_one_hour()}), SECRET);
        let offered = format!("websocket-manager, bearer.{token}");
        let identity = authenticate(&authenticator, &[("sec-websocket-protocol", &offered)])
            .await
            .unwrap();
        assert_eq!(identity.user_id.as_str(), "carol");
        assert_eq!(identity.subprotocol.as_deref(), Some("websocket-manager"));
        // The token alone, without the protocol to echo, would break browsers.
        let alone = format!("bearer.{token}");
        assert!(
            authenticate(&authenticator, &[("sec-websocket-protocol", &alone)])
                .await
                .is_err()
        );
    }

    #[cfg(feature = "jwt-rsa")]
    mod rsa {
        use super::*;
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

        const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt_rs256_private.pem");
        const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt_rs256_public.pem");
        const RSA_OTHER_PRIVATE: &[u8] =
            include_bytes!("../../tests/fixtures/jwt_rs256_other_private.pem");

        fn rs256(claims: &Value, private_pem: &[u8]) -> String {
            encode(
                &Header::new(Algorithm::RS256),
                claims,
                &EncodingKey::from_rsa_pem(private_pem).unwrap(),
            )
            .unwrap()
        }

        #[test]
        fn rs256_accepts_its_key_and_refuses_another_and_algorithm_confusion() {
            let authenticator = JwtAuthenticator::rs256_pem(RSA_PUBLIC).unwrap();
            let good = rs256(&valid_claims(), RSA_PRIVATE);
            assert_eq!(
                decode(&authenticator, &good).unwrap().user_id.as_str(),
                "alice"
            );
            let other = rs256(&valid_claims(), RSA_OTHER_PRIVATE);
            assert_eq!(
                decode(&authenticator, &other).unwrap_err(),
                JwtError::Signature
            );
            // HS256 signed with the public key as the secret (algorithm confusion)
            let confused = encode_hs256(&valid_claims(), RSA_PUBLIC);
            assert_eq!(
                decode(&authenticator, &confused).unwrap_err(),
                JwtError::Algorithm {
                    found: "HS256".to_owned(),
                    expected: "RS256"
                }
            );
            assert!(matches!(
                JwtAuthenticator::rs256_pem(b"not a pem"),
                Err(JwtConfigError::Key(_))
            ));
        }

        #[test]
        fn an_rsa_key_under_2048_bits_is_refused() {
            const SMALL: &[u8] = include_bytes!("../../tests/fixtures/jwt_rs256_1024_public.pem");
            assert_eq!(
                JwtAuthenticator::rs256_pem(SMALL).unwrap_err(),
                JwtConfigError::RsaKeyTooSmall {
                    bits: 1024,
                    min: 2048
                }
            );
            assert!(JwtAuthenticator::rs256_pem(RSA_PUBLIC).is_ok());
        }

        #[test]
        fn our_hs256_tokens_interoperate_with_jsonwebtoken() {
            let theirs = encode(
                &Header::default(),
                &valid_claims(),
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            let verified = decode(&JwtAuthenticator::hs256(SECRET).unwrap(), &theirs).unwrap();
            assert_eq!(verified.user_id.as_str(), "alice");
            let ours = encode_hs256(&valid_claims(), SECRET);
            let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
            validation.validate_exp = false;
            let data = jsonwebtoken::decode::<Map<String, Value>>(
                &ours,
                &jsonwebtoken::DecodingKey::from_secret(SECRET),
                &validation,
            )
            .unwrap();
            assert_eq!(data.claims["sub"], "alice");
        }
    }
}
