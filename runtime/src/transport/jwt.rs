//! [`JwtAuthenticator`] (feature `jwt`): a ready [`Authenticator`] for JSON
//! Web Tokens, HS256 or RS256, on `jsonwebtoken` with its pure-Rust crypto.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::auth::{AuthError, Authenticator, Identity, UpgradeRequest};
use crate::ids::UserId;

/// The default subprotocol a browser offers alongside its token.
pub const DEFAULT_SUBPROTOCOL: &str = "websocket-manager";
/// The prefix of the `Sec-WebSocket-Protocol` entry that carries the token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct JwtError(#[from] jsonwebtoken::errors::Error);

/// Verifies a JWT on the upgrade request: signature (HS256 or RS256), expiry
/// (`exp` is required), audience and issuer when configured; the user is the
/// `sub` claim.
///
/// The token is read from `Authorization: Bearer <jwt>`, or — since browsers
/// cannot set headers on a WebSocket — from `Sec-WebSocket-Protocol`:
/// `new WebSocket(url, ["websocket-manager", "bearer." + jwt])`. The server
/// then echoes `websocket-manager` (never the token entry); a client that
/// sends the token this way must offer that protocol too.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use websocket_manager::transport::JwtAuthenticator;
/// let authenticator = JwtAuthenticator::hs256(b"a long random secret")
///     .audience(["agent-api"])
///     .leeway(Duration::from_secs(5));
/// # let _ = authenticator;
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    subprotocol: String,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Tokens signed with HMAC-SHA256 and this shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Tokens signed with RSA-SHA256, verified with this PEM public key.
    ///
    /// # Errors
    ///
    /// [`JwtError`] when the PEM is not an RSA public key.
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Self, JwtError> {
        Ok(Self::with_key(
            DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::RS256,
        ))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtAuthenticator {
            key,
            validation,
            subprotocol: DEFAULT_SUBPROTOCOL.to_owned(),
        }
    }

    /// Requires the `aud` claim to name one of these audiences.
    pub fn audience<I, S>(mut self, audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let audiences: Vec<String> = audiences.into_iter().map(|a| a.to_string()).collect();
        self.validation.set_audience(&audiences);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Requires the `iss` claim to be one of these issuers.
    pub fn issuer<I, S>(mut self, issuers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let issuers: Vec<String> = issuers.into_iter().map(|i| i.to_string()).collect();
        self.validation.set_issuer(&issuers);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default none).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
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
    /// [`AuthError::Unauthorized`] for a bad signature, an expired token, a
    /// wrong audience or issuer, or a `sub` that is not a valid user id.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_with_expiry(token).map(|(user, _)| user)
    }

    /// [`verify`](Self::verify), and the instant the token stops being
    /// valid (`exp` plus the leeway): a live connection is closed then.
    fn verify_with_expiry(&self, token: &str) -> Result<(UserId, Option<SystemTime>), AuthError> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|error| AuthError::Unauthorized(format!("invalid token: {error}").into()))?;
        let subject = data
            .claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or(AuthError::Unauthorized(
                "the `sub` claim must be a string".into(),
            ))?;
        let user = UserId::new(subject)
            .map_err(|error| AuthError::Unauthorized(format!("bad `sub` claim: {error}").into()))?;
        // `exp` is required and was validated, so it is a number.
        let exp = data
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(AuthError::Unauthorized(
                "the `exp` claim must be a whole number".into(),
            ))?;
        // An `exp` beyond what the clock can represent never comes.
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_secs(
            exp.saturating_add(self.validation.leeway),
        ));
        Ok((user, expires_at))
    }
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
        let (user_id, expires_at) = self.verify_with_expiry(token)?;
        let mut identity = Identity::new(user_id);
        identity.expires_at = expires_at;
        if offered_app_protocol {
            identity.subprotocol = Some(self.subprotocol.clone());
        }
        identity
            .metadata
            .insert("auth".to_owned(), serde_json::Value::from("jwt"));
        Ok(identity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderMap, Uri};
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    const SECRET: &[u8] = b"test secret, long enough for HS256";
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt_rs256_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt_rs256_public.pem");
    const RSA_OTHER_PRIVATE: &[u8] =
        include_bytes!("../../tests/fixtures/jwt_rs256_other_private.pem");

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn rs256(claims: serde_json::Value, private_pem: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(private_pem).unwrap(),
        )
        .unwrap()
    }

    fn in_one_hour() -> u64 {
        get_current_timestamp() + 3600
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

    #[tokio::test]
    async fn hs256_bearer_header_yields_the_subject() {
        let authenticator = JwtAuthenticator::hs256(SECRET);
        let token = hs256(json!({"sub": "alice", "exp": in_one_hour()}), SECRET);
        let identity = authenticate(
            &authenticator,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap();
        assert_eq!(identity.user_id.as_str(), "alice");
        assert_eq!(identity.subprotocol, None);
    }

    #[tokio::test]
    async fn the_identity_expires_with_the_token_plus_the_leeway() {
        let exp = in_one_hour();
        let token = hs256(json!({"sub": "alice", "exp": exp}), SECRET);
        let bearer = format!("Bearer {token}");
        let header = [("authorization", bearer.as_str())];
        let strict = authenticate(&JwtAuthenticator::hs256(SECRET), &header)
            .await
            .unwrap();
        assert_eq!(
            strict.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp))
        );
        let lenient = JwtAuthenticator::hs256(SECRET).leeway(Duration::from_secs(30));
        let lenient = authenticate(&lenient, &header).await.unwrap();
        assert_eq!(
            lenient.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 30))
        );
    }

    #[tokio::test]
    async fn expired_wrong_secret_missing_and_bad_subject_are_unauthorized() {
        let authenticator = JwtAuthenticator::hs256(SECRET);
        let expired = hs256(
            json!({"sub": "alice", "exp": get_current_timestamp() - 10}),
            SECRET,
        );
        let forged = hs256(
            json!({"sub": "alice", "exp": in_one_hour()}),
            b"another secret entirely",
        );
        let no_exp = hs256(json!({"sub": "alice"}), SECRET);
        let numeric_sub = hs256(json!({"sub": 42, "exp": in_one_hour()}), SECRET);
        for token in [expired, forged, no_exp, numeric_sub, "not.a.jwt".to_owned()] {
            let result = authenticate(
                &authenticator,
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
            assert!(
                matches!(result, Err(AuthError::Unauthorized(_))),
                "{token}: {result:?}"
            );
        }
        assert!(matches!(
            authenticate(&authenticator, &[]).await,
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn audience_is_checked_when_configured() {
        let authenticator = JwtAuthenticator::hs256(SECRET).audience(["agent-api"]);
        let right = hs256(
            json!({"sub": "a", "exp": in_one_hour(), "aud": "agent-api"}),
            SECRET,
        );
        let wrong = hs256(
            json!({"sub": "a", "exp": in_one_hour(), "aud": "billing"}),
            SECRET,
        );
        let none = hs256(json!({"sub": "a", "exp": in_one_hour()}), SECRET);
        assert!(
            authenticate(
                &authenticator,
                &[("authorization", &format!("Bearer {right}"))]
            )
            .await
            .is_ok()
        );
        for token in [wrong, none] {
            assert!(
                authenticate(
                    &authenticator,
                    &[("authorization", &format!("Bearer {token}"))]
                )
                .await
                .is_err()
            );
        }
    }

    #[tokio::test]
    async fn rs256_accepts_its_key_and_refuses_another() {
        let authenticator = JwtAuthenticator::rs256_pem(RSA_PUBLIC).unwrap();
        let good = rs256(json!({"sub": "bob", "exp": in_one_hour()}), RSA_PRIVATE);
        let other = rs256(
            json!({"sub": "bob", "exp": in_one_hour()}),
            RSA_OTHER_PRIVATE,
        );
        let identity = authenticate(
            &authenticator,
            &[("authorization", &format!("Bearer {good}"))],
        )
        .await
        .unwrap();
        assert_eq!(identity.user_id.as_str(), "bob");
        assert!(
            authenticate(
                &authenticator,
                &[("authorization", &format!("Bearer {other}"))]
            )
            .await
            .is_err()
        );
        // An HS256 token signed with the public key as secret (algorithm confusion) is refused.
        let confused = hs256(json!({"sub": "bob", "exp": in_one_hour()}), RSA_PUBLIC);
        assert!(
            authenticate(
                &authenticator,
                &[("authorization", &format!("Bearer {confused}"))]
            )
            .await
            .is_err()
        );
        assert!(JwtAuthenticator::rs256_pem(b"not a pem").is_err());
    }

    #[tokio::test]
    async fn token_in_subprotocol_echoes_the_app_protocol_only() {
        let authenticator = JwtAuthenticator::hs256(SECRET);
        let token = hs256(json!({"sub": "carol", "exp": in_one_hour()}), SECRET);
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
}
