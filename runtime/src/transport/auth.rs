//! Authentication at the HTTP upgrade: [`Authenticator`] (supplied by the
//! application), [`OriginPolicy`] and what they see, [`UpgradeRequest`].
//!
//! The user's identity always comes from a verified credential on the
//! upgrade request, before any socket exists or any registration happens;
//! never from a `user_id` query parameter.

use std::borrow::Cow;
use std::collections::BTreeSet;

use http::{HeaderMap, StatusCode, Uri, header};

use crate::ids::{ThreadId, UserId};
use crate::readiness::NotReady;

/// The parts of the HTTP upgrade request an authenticator may look at.
///
/// ```
/// use websocket_manager::transport::UpgradeRequest;
/// let uri: http::Uri = "/ws?thread=t%2D1&x=y".parse().unwrap();
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "Bearer abc".parse().unwrap());
/// headers.insert("sec-websocket-protocol", "agent.v1, bearer.xyz".parse().unwrap());
/// let request = UpgradeRequest::new(&uri, &headers);
/// assert_eq!(request.query_param("thread").as_deref(), Some("t-1"));
/// assert_eq!(request.bearer_token(), Some("abc"));
/// assert_eq!(request.offered_protocols().collect::<Vec<_>>(), ["agent.v1", "bearer.xyz"]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    /// The request target (path and query).
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> UpgradeRequest<'a> {
    /// A view on a request's target and headers.
    pub fn new(uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        UpgradeRequest { uri, headers }
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space);
    /// `None` when it is absent or not valid percent-encoded UTF-8 (use
    /// [`query_param_checked`](Self::query_param_checked) to tell the two apart).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_param_checked(name).ok().flatten()
    }

    /// The first value of a query parameter, percent-decoded (`+` is a
    /// space): `Ok(None)` when absent.
    ///
    /// ```
    /// use websocket_manager::transport::UpgradeRequest;
    /// let uri: http::Uri = "/ws?resume=%zz".parse().unwrap();
    /// let headers = http::HeaderMap::new();
    /// let request = UpgradeRequest::new(&uri, &headers);
    /// assert!(request.query_param_checked("resume").is_err());
    /// assert_eq!(request.query_param_checked("thread").unwrap(), None);
    /// ```
    ///
    /// # Errors
    ///
    /// [`AuthError::BadRequest`] naming the parameter when its first value is
    /// not valid percent-encoded UTF-8.
    pub fn query_param_checked(&self, name: &str) -> Result<Option<String>, AuthError> {
        let Some(query) = self.uri.query() else {
            return Ok(None);
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key).as_deref() == Some(name) {
                return percent_decode(value).map(Some).ok_or_else(|| {
                    AuthError::BadRequest(
                        format!("query parameter `{name}` is not valid percent-encoded UTF-8")
                            .into(),
                    )
                });
            }
        }
        Ok(None)
    }

    /// The token of an `Authorization: Bearer <token>` header (see
    /// [`bearer_token`]).
    pub fn bearer_token(&self) -> Option<&'a str> {
        bearer_token(self.headers)
    }

    /// The subprotocols the client offered in `Sec-WebSocket-Protocol`, in order.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }

    /// The `Origin` header, if any.
    pub fn origin(&self) -> Option<&'a str> {
        self.headers.get(header::ORIGIN)?.to_str().ok()
    }
}

/// A view on an HTTP request's target and headers, for
/// [`WebSocketService::authenticate_http`](super::WebSocketService::authenticate_http)
/// from any route.
impl<'a> From<&'a http::request::Parts> for UpgradeRequest<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        UpgradeRequest::new(&parts.uri, &parts.headers)
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (`bearer`, `BEARER`: RFC 7235, 2.1). `None` without
/// the header, with another scheme, or with an empty token.
///
/// ```
/// use websocket_manager::transport::bearer_token;
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "bearer abc".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Some("abc"));
/// headers.insert("authorization", "Basic YWxpY2U6".parse().unwrap());
/// assert_eq!(bearer_token(&headers), None);
/// ```
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who an ordinary HTTP request (not an upgrade) of the application was
/// authenticated as, by
/// [`WebSocketService::authenticate_http`](super::WebSocketService::authenticate_http):
/// the same `Origin` policy, authenticator and thread policy as the
/// WebSocket upgrade. With feature `axum` it is also an extractor
/// (see [`transport::axum`](mod@super::axum)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Authenticated {
    /// Who the request was authenticated as.
    pub identity: Identity,
    /// The thread from the `thread` query parameter, already authorized
    /// for this identity.
    pub thread_id: Option<ThreadId>,
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a
/// byte) by `percent-encoding`. A `%` not followed by two hex digits, or a
/// value that is not UTF-8, is unreadable (`None`), never a guessed byte.
fn percent_decode(input: &str) -> Option<String> {
    let malformed = input.match_indices('%').any(|(at, _)| {
        !input
            .as_bytes()
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return None;
    }
    // `+` first: an encoded `%2B` must stay a plus
    let spaced = input.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Who the upgrade request was authenticated as.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The verified user.
    pub user_id: UserId,
    /// The subprotocol to echo in the `101` response. When the client offered
    /// subprotocols, browsers fail the connection unless the server selects
    /// one of them; never select the one that carries the token.
    pub subprotocol: Option<String>,
    /// Data stored in the connection's metadata (claims, client version...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When the credential stops being valid: the live connection is closed
    /// then, with [`TOKEN_EXPIRED`](crate::close::TOKEN_EXPIRED) (4401
    /// `token expired`), and the client reconnects with a fresh token.
    /// `None`: the connection lives as long as the client keeps it.
    /// [`JwtAuthenticator`](super::JwtAuthenticator) sets it from `exp`.
    pub expires_at: Option<std::time::SystemTime>,
}

impl Identity {
    /// An identity with no subprotocol and no metadata.
    pub fn new(user_id: UserId) -> Self {
        Identity {
            user_id,
            subprotocol: None,
            metadata: serde_json::Map::new(),
            expires_at: None,
        }
    }

    /// The same identity, valid until `instant` (see [`Identity::expires_at`]).
    pub fn with_expiry(mut self, instant: std::time::SystemTime) -> Self {
        self.expires_at = Some(instant);
        self
    }
}

/// Why an upgrade was refused; [`status`](Self::status) is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential, or one that failed verification: `401`.
    #[error("unauthorized: {0}")]
    Unauthorized(Cow<'static, str>),
    /// A verified user who may not do this, or a foreign `Origin`: `403`.
    #[error("forbidden: {0}")]
    Forbidden(Cow<'static, str>),
    /// A malformed request (bad thread id, bad resume offset...): `400`. Its
    /// detail is shown to the client (it describes the client's own input),
    /// so never put verification detail in it.
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    /// The service or its manager admits no connection now (starting,
    /// cut off from its cluster, draining, at capacity): `503` with a
    /// `Retry-After` header ([`retry_after_header`](Self::retry_after_header)),
    /// answered before any `101`, so that a load balancer or the client
    /// tries another server.
    #[error("unavailable: {0}")]
    Unavailable(NotReady),
}

impl AuthError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The value of the `Retry-After` header (seconds) to send with this
    /// refusal, for [`Unavailable`](Self::Unavailable) only: the refusal's
    /// delay with a little random extra
    /// ([`NotReady::jittered_retry_after_secs`]), so that clients refused
    /// together do not come back together.
    ///
    /// ```
    /// use std::time::Duration;
    /// use websocket_manager::transport::AuthError;
    /// use websocket_manager::{NotReady, NotReadyReason};
    /// let refusal = AuthError::Unavailable(NotReady::new(NotReadyReason::Starting, "redis down", Duration::from_secs(3)));
    /// assert!(matches!(refusal.retry_after_header(), Some(3 | 4)));
    /// assert_eq!(refusal.public_message(), "Service Unavailable: starting");
    /// assert_eq!(AuthError::Forbidden("origin".into()).retry_after_header(), None);
    /// ```
    pub fn retry_after_header(&self) -> Option<u64> {
        match self {
            AuthError::Unavailable(not_ready) => Some(not_ready.jittered_retry_after_secs()),
            _ => None,
        }
    }

    /// The text for the response body: the status's name, so that no
    /// verification detail leaks to the client (the detail is logged);
    /// for [`BadRequest`](Self::BadRequest) also what is wrong with the
    /// client's input, so it can fix it; for [`Unavailable`](Self::Unavailable)
    /// the reason's one word (`starting`, `draining`...), never its detail.
    ///
    /// ```
    /// use websocket_manager::transport::AuthError;
    /// assert_eq!(AuthError::Unauthorized("bad signature".into()).public_message(), "Unauthorized");
    /// assert_eq!(
    ///     AuthError::BadRequest("`resume`: no `:`".into()).public_message(),
    ///     "Bad Request: `resume`: no `:`"
    /// );
    /// ```
    pub fn public_message(&self) -> Cow<'static, str> {
        let status = self.status().canonical_reason().unwrap_or("refused");
        match self {
            AuthError::BadRequest(detail) => format!("{status}: {detail}").into(),
            AuthError::Unavailable(not_ready) => format!("{status}: {}", not_ready.reason).into(),
            _ => status.into(),
        }
    }
}

/// Why an in-band token refresh was refused (see
/// [`Authenticator::refresh`]). The connection keeps its old deadline; the
/// client is told [`reason`](Self::reason) in a `token_refresh_refused`
/// error frame, and the detail is logged.
///
/// ```
/// use websocket_manager::transport::RefreshError;
/// assert_eq!(RefreshError::Invalid("bad signature".into()).reason(), "invalid token");
/// assert_eq!(RefreshError::OtherUser.reason(), "other user");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The token failed verification (signature, audience, format...).
    #[error("invalid token: {0}")]
    Invalid(Cow<'static, str>),
    /// The token is valid but has already expired.
    #[error("the new token has already expired")]
    Expired,
    /// The token belongs to another user than the connection's.
    #[error("the new token belongs to another user")]
    OtherUser,
    /// The authenticator cannot refresh a live connection.
    #[error("this authenticator does not support in-band token refresh")]
    Unsupported,
}

impl RefreshError {
    /// The short reason sent to the client (no verification detail):
    /// `invalid token`, `expired`, `other user` or `not supported`.
    pub fn reason(&self) -> &'static str {
        match self {
            RefreshError::Invalid(_) => "invalid token",
            RefreshError::Expired => "expired",
            RefreshError::OtherUser => "other user",
            RefreshError::Unsupported => "not supported",
        }
    }
}

/// Verifies the credential on an upgrade request.
///
/// Runs before any registration; an `Err` becomes the HTTP status of
/// [`AuthError::status`] and no socket is opened. See
/// [`JwtAuthenticator`](super::JwtAuthenticator) (feature `jwt`) for a ready one.
///
/// ```
/// use websocket_manager::transport::{AuthError, Authenticator, Identity, UpgradeRequest};
/// use websocket_manager::UserId;
/// /// Accepts `Authorization: Bearer <api key>` from a fixed table.
/// struct ApiKeys(std::collections::HashMap<String, UserId>);
/// #[websocket_manager::transport::async_trait]
/// impl Authenticator for ApiKeys {
///     async fn authenticate(&self, request: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
///         let key = request.bearer_token().ok_or(AuthError::Unauthorized("no token".into()))?;
///         let user = self.0.get(key).ok_or(AuthError::Unauthorized("unknown key".into()))?;
///         Ok(Identity::new(user.clone()))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies the request's credential and returns who it belongs to.
    ///
    /// # Errors
    ///
    /// [`AuthError::Unauthorized`] for a missing or invalid credential.
    async fn authenticate(&self, request: &UpgradeRequest<'_>) -> Result<Identity, AuthError>;

    /// Whether `identity` may follow `thread` (from the `thread` query
    /// parameter). The default allows every thread: override it when thread
    /// ids are guessable and threads are private, since `send_to_thread`
    /// reaches every connection bound to the thread.
    ///
    /// # Errors
    ///
    /// [`AuthError::Forbidden`] to refuse.
    async fn authorize_thread(
        &self,
        identity: &Identity,
        thread: &ThreadId,
    ) -> Result<(), AuthError> {
        let _ = (identity, thread);
        Ok(())
    }

    /// Verifies a new token sent in-band by the client of a live connection
    /// authenticated as `current` (`{"type":"refresh_token","token":...}`),
    /// and returns the identity it proves, whose
    /// [`expires_at`](Identity::expires_at) becomes the connection's
    /// deadline. The transport refuses an identity of another user anyway.
    /// The default refuses with [`RefreshError::Unsupported`];
    /// [`JwtAuthenticator`](super::JwtAuthenticator) verifies the token as
    /// at the upgrade.
    ///
    /// # Errors
    ///
    /// [`RefreshError`]: the connection then keeps its old deadline.
    async fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, RefreshError> {
        let _ = (current, token);
        Err(RefreshError::Unsupported)
    }
}

/// Wraps an [`Authenticator`] so that a user may follow only threads named
/// `"<user id>:<anything>"`: a user cannot subscribe to another user's
/// thread by guessing its id, since `send_to_thread` reaches every
/// connection bound to the thread.
///
/// A user whose id contains `:` may follow no thread at all through this
/// wrapper: otherwise user `a` and user `a:b` would both own the thread
/// `a:b:run-1`. Such a user is refused with a 403 that says why.
///
/// ```
/// use websocket_manager::transport::{Authenticator, Identity, UserScopedThreads};
/// use websocket_manager::{ThreadId, UserId};
/// # #[derive(Clone)] struct Any;
/// # #[websocket_manager::transport::async_trait]
/// # impl Authenticator for Any {
/// #     async fn authenticate(&self, _: &websocket_manager::transport::UpgradeRequest<'_>)
/// #         -> Result<Identity, websocket_manager::transport::AuthError> { unreachable!() }
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let scoped = UserScopedThreads(Any);
/// let alice = Identity::new(UserId::new("alice")?);
/// assert!(scoped.authorize_thread(&alice, &ThreadId::new("alice:run-1")?).await.is_ok());
/// assert!(scoped.authorize_thread(&alice, &ThreadId::new("bob:run-1")?).await.is_err());
/// # Ok::<(), websocket_manager::IdError>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct UserScopedThreads<A>(pub A);

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for UserScopedThreads<A> {
    async fn authenticate(&self, request: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
        self.0.authenticate(request).await
    }

    async fn authorize_thread(
        &self,
        identity: &Identity,
        thread: &ThreadId,
    ) -> Result<(), AuthError> {
        if identity.user_id.as_str().contains(':') {
            return Err(AuthError::Forbidden(
                format!(
                    "user `{}` cannot own threads: a user id containing `:` could \
                     claim another user's `<user id>:...` threads",
                    identity.user_id
                )
                .into(),
            ));
        }
        let owned = thread
            .as_str()
            .strip_prefix(identity.user_id.as_str())
            .is_some_and(|rest| rest.starts_with(':'));
        if !owned {
            return Err(AuthError::Forbidden(
                format!(
                    "thread `{thread}` does not belong to user `{}` (expected `{}:...`)",
                    identity.user_id, identity.user_id
                )
                .into(),
            ));
        }
        self.0.authorize_thread(identity, thread).await
    }

    async fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, RefreshError> {
        self.0.refresh(current, token).await
    }
}

/// Which `Origin`s may open a WebSocket (against cross-site WebSocket
/// hijacking: browsers send cookies with a cross-site upgrade, and the
/// `Origin` header is the only sign of it).
///
/// The default allows no browser origin and allows requests without an
/// `Origin` (non-browser clients do not send one).
///
/// ```
/// use websocket_manager::transport::OriginPolicy;
/// let policy = OriginPolicy::allow(["http://127.0.0.1:3000"]);
/// assert!(policy.check(Some("http://127.0.0.1:3000")).is_ok());
/// assert!(policy.check(Some("HTTP://127.0.0.1:3000/")).is_ok());
/// assert!(policy.check(Some("https://evil.example")).is_err());
/// assert!(policy.check(None).is_ok());
/// assert!(policy.clone().require_origin(true).check(None).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: BTreeSet<String>,
    any: bool,
    require_origin: bool,
}

impl OriginPolicy {
    /// Allows exactly these origins (`scheme://host[:port]`).
    pub fn allow<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        OriginPolicy {
            allowed: origins
                .into_iter()
                .map(|o| normalize_origin(o.as_ref()))
                .collect(),
            any: false,
            require_origin: false,
        }
    }

    /// Allows every origin. Only for servers that use no ambient credential
    /// (cookies) at all.
    pub fn any() -> Self {
        OriginPolicy {
            allowed: BTreeSet::new(),
            any: true,
            require_origin: false,
        }
    }

    /// Adds one allowed origin.
    pub fn with_origin(mut self, origin: impl AsRef<str>) -> Self {
        self.allowed.insert(normalize_origin(origin.as_ref()));
        self
    }

    /// Refuses requests without an `Origin` header (browser-only servers).
    pub fn require_origin(mut self, required: bool) -> Self {
        self.require_origin = required;
        self
    }

    /// Checks an `Origin` header value.
    ///
    /// # Errors
    ///
    /// [`AuthError::Forbidden`] for an origin not on the list, or a missing
    /// one when it is required.
    pub fn check(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match origin {
            None if self.require_origin => {
                Err(AuthError::Forbidden("the Origin header is required".into()))
            }
            None => Ok(()),
            Some(_) if self.any => Ok(()),
            Some(origin) if self.allowed.contains(&normalize_origin(origin)) => Ok(()),
            Some(origin) => Err(AuthError::Forbidden(
                format!(
                    "origin `{}` is not allowed",
                    origin.chars().take(100).collect::<String>()
                )
                .into(),
            )),
        }
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded_and_missing_ones_are_none() {
        let uri: Uri = "/ws?a=1&thread=hello+w%C3%B6rld&bad=%zz".parse().unwrap();
        let headers = HeaderMap::new();
        let request = UpgradeRequest::new(&uri, &headers);
        assert_eq!(
            request.query_param("thread").as_deref(),
            Some("hello wörld")
        );
        assert_eq!(request.query_param("a").as_deref(), Some("1"));
        assert_eq!(request.query_param("user_id"), None);
        assert_eq!(request.query_param("bad"), None);
    }

    #[test]
    fn only_two_hex_digits_make_an_escape() {
        // `from_str_radix` accepted a sign: `%+f` was read as 0x0f
        for malformed in ["%+f", "%-1", "%f", "%", "a%2", "%%41", "%ff"] {
            assert_eq!(percent_decode(malformed), None, "{malformed}");
        }
        assert_eq!(percent_decode("%2B+%41").as_deref(), Some("+ A"));
        assert_eq!(percent_decode("t%2d1").as_deref(), Some("t-1"));
    }

    #[test]
    fn bearer_token_needs_the_scheme() {
        let uri: Uri = "/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(UpgradeRequest::new(&uri, &headers).bearer_token(), None);
        headers.insert(header::AUTHORIZATION, "bearer   tok ".parse().unwrap());
        assert_eq!(
            UpgradeRequest::new(&uri, &headers).bearer_token(),
            Some("tok")
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR tok"] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&headers), Some("tok"), "{value}");
        }
        for value in ["Bearer", "Bearer ", "Bearertok", "Bearers tok", "Basic tok"] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&headers), None, "{value}");
        }
    }

    #[test]
    fn statuses_match_the_refusal() {
        assert_eq!(
            AuthError::Unauthorized("x".into()).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            AuthError::Forbidden("x".into()).status(),
            StatusCode::FORBIDDEN
        );
        let unavailable = AuthError::Unavailable(NotReady::new(
            crate::NotReadyReason::Fenced,
            "secret detail",
            std::time::Duration::from_secs(2),
        ));
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.public_message(), "Service Unavailable: fenced");
        assert_eq!(
            AuthError::Unauthorized("secret detail".into()).public_message(),
            "Unauthorized"
        );
    }

    struct Nobody;

    #[async_trait::async_trait]
    impl Authenticator for Nobody {
        async fn authenticate(&self, _: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
            Err(AuthError::Unauthorized("nobody".into()))
        }
    }

    #[tokio::test]
    async fn scoped_threads_need_the_exact_user_prefix() {
        let scoped = UserScopedThreads(Nobody);
        let ali = Identity::new(UserId::new("ali").unwrap());
        for (thread, allowed) in [
            ("ali:t", true),
            ("alice:t", false),
            ("ali", false),
            ("xali:t", false),
        ] {
            let result = scoped
                .authorize_thread(&ali, &ThreadId::new(thread).unwrap())
                .await;
            assert_eq!(result.is_ok(), allowed, "{thread}: {result:?}");
            if let Err(error) = result {
                assert_eq!(error.status(), StatusCode::FORBIDDEN);
            }
        }
    }

    #[tokio::test]
    async fn a_user_id_with_a_colon_owns_no_scoped_thread() {
        let scoped = UserScopedThreads(Nobody);
        let a = Identity::new(UserId::new("a").unwrap());
        let a_b = Identity::new(UserId::new("a:b").unwrap());
        let thread = ThreadId::new("a:b:run-1").unwrap();
        // The thread has exactly one possible owner: user `a`.
        assert!(scoped.authorize_thread(&a, &thread).await.is_ok());
        let refused = scoped.authorize_thread(&a_b, &thread).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.to_string().contains("containing `:`"), "{refused}");
    }

    #[test]
    fn any_policy_still_honours_require_origin() {
        assert!(OriginPolicy::any().check(Some("https://x.example")).is_ok());
        assert!(
            OriginPolicy::any()
                .require_origin(true)
                .check(None)
                .is_err()
        );
        assert!(
            OriginPolicy::default()
                .check(Some("http://127.0.0.1"))
                .is_err()
        );
    }
}
