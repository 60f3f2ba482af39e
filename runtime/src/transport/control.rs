//! The transport's own frames of the wire protocol (`docs/protocol.md`):
//! [`Hello`], the first frame of every connection; `heartbeat`;
//! `token_refreshed`; and the client frames the transport answers itself
//! (`refresh_token`, `heartbeat`) instead of handing them to the
//! application.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::config::TransportConfig;
use crate::connection::TextFrame;
use crate::health::unix_millis;
use crate::ids::{ConnectionId, UserId};
use crate::offset::{StreamOffset, StreamPosition};

/// The protocol version in [`Hello::protocol`]: raised only by a change
/// that breaks a client of `docs/protocol.md` (added members do not).
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame of every connection, sent once the connection is
/// registered with the manager (so every event emitted after the client
/// received it reaches the connection), before any `resync` notice, replayed
/// event or live frame:
///
/// ```json
/// {"type":"hello","protocol":1,"user":"alice","connection_id":"conn-1","token_expires_at":1767225600000,"latest":{"stream":9,"sequence":7},"retention":{"max_events":256,"max_age_ms":300000,"oldest":{"stream":9,"sequence":5}},"heartbeat_ms":25000,"ts":1767225300000}
/// ```
///
/// A client reads it with serde (unknown members are ignored, so a newer
/// server's additions do not break it):
///
/// ```
/// use websocket_manager::transport::Hello;
/// let text = r#"{"type":"hello","protocol":1,"user":"alice","connection_id":"conn-1","token_expires_at":null,"latest":null,"retention":null,"heartbeat_ms":25000,"ts":5,"later":true}"#;
/// let hello: Hello = serde_json::from_str(text)?;
/// assert_eq!(hello.user, "alice");
/// assert_eq!(hello.heartbeat_ms, Some(25000));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "hello")]
#[non_exhaustive]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The user the connection was authenticated as.
    pub user: String,
    /// The connection's id on the server.
    pub connection_id: String,
    /// The connection's deadline (the token's expiry), Unix milliseconds;
    /// `None`: no deadline.
    pub token_expires_at: Option<u64>,
    /// The last critical event emitted to the user when the connection was
    /// registered (sequence 0: none in the current stream yet); `None` when
    /// the manager does not report it.
    pub latest: Option<StreamOffset>,
    /// What the server can still replay; `None` when the manager does not
    /// report it.
    pub retention: Option<Retention>,
    /// The server writes at least one frame this often (heartbeats fill the
    /// silence); `None` when heartbeat frames are off.
    pub heartbeat_ms: Option<u64>,
    /// The server's clock when it sent the frame, Unix milliseconds.
    pub ts: u64,
}

/// The retention bounds in a [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Retention {
    /// Critical events retained per user, at most.
    pub max_events: usize,
    /// How long a critical event is retained, at most, in milliseconds.
    pub max_age_ms: u64,
    /// The oldest retained critical event, if any.
    pub oldest: Option<StreamOffset>,
}

impl Hello {
    /// The hello of a connection just registered: `position` is what the
    /// manager recorded on its socket.
    pub(crate) fn new(
        user: &UserId,
        connection_id: &ConnectionId,
        expires_at: Option<SystemTime>,
        position: Option<StreamPosition>,
        config: &TransportConfig,
    ) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            user: user.as_str().to_owned(),
            connection_id: connection_id.as_str().to_owned(),
            token_expires_at: expires_at.map(unix_millis),
            latest: position.and_then(|p| p.latest),
            retention: position.map(|p| Retention {
                max_events: p.max_events,
                max_age_ms: u64::try_from(p.max_age.as_millis()).unwrap_or(u64::MAX),
                oldest: p.oldest_retained,
            }),
            heartbeat_ms: config
                .heartbeat_frames()
                .then(|| u64::try_from(config.ping_interval().as_millis()).unwrap_or(u64::MAX)),
            ts: unix_millis(SystemTime::now()),
        }
    }
}

/// `{"type":"heartbeat","ts":<unix ms>}`.
pub(crate) fn heartbeat_frame() -> TextFrame {
    TextFrame::from_string(format!(
        r#"{{"type":"heartbeat","ts":{}}}"#,
        unix_millis(SystemTime::now())
    ))
}

/// `{"type":"token_refreshed","expires_at":<unix ms>|null,"ts":<unix ms>}`.
pub(crate) fn token_refreshed_frame(expires_at: Option<SystemTime>) -> TextFrame {
    let expires_at = expires_at.map_or_else(|| "null".to_owned(), |at| unix_millis(at).to_string());
    TextFrame::from_string(format!(
        r#"{{"type":"token_refreshed","expires_at":{expires_at},"ts":{}}}"#,
        unix_millis(SystemTime::now())
    ))
}

/// A client frame the transport handles itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientControl {
    /// `{"type":"heartbeat"}`: nothing to do (it already counted as a sign
    /// of life).
    Heartbeat,
    /// `{"type":"refresh_token","token":"..."}`.
    RefreshToken(String),
    /// `{"type":"refresh_token"}` without a string `token`.
    MalformedRefresh,
}

/// What a control frame's members can be; anything else in it is ignored.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: Option<String>,
    token: Option<serde_json::Value>,
}

/// The control frame `text` is, or `None` for an application message.
///
/// Only a text naming one of the two types is parsed (a substring test
/// first), so application messages cost one scan for it.
pub(crate) fn client_control(text: &str) -> Option<ClientControl> {
    if !(text.contains("\"heartbeat\"") || text.contains("\"refresh_token\"")) {
        return None;
    }
    let probe: Probe = serde_json::from_str(text).ok()?;
    match probe.kind.as_deref()? {
        "heartbeat" => Some(ClientControl::Heartbeat),
        "refresh_token" => Some(match probe.token {
            Some(serde_json::Value::String(token)) => ClientControl::RefreshToken(token),
            _ => ClientControl::MalformedRefresh,
        }),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hello_is_tagged_first_and_carries_the_position() {
        let user = UserId::new("alice").unwrap();
        let connection = ConnectionId::new("conn-1").unwrap();
        let position = StreamPosition::new(
            Some(StreamOffset::new(9, 7)),
            Some(StreamOffset::new(9, 5)),
            256,
            Duration::from_secs(300),
        );
        let expires = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_000);
        let hello = Hello::new(
            &user,
            &connection,
            Some(expires),
            Some(position),
            &TransportConfig::default(),
        );
        let text = serde_json::to_string(&hello).unwrap();
        assert!(
            text.starts_with(r#"{"type":"hello","protocol":1,"user":"alice","#),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["token_expires_at"], 1_767_225_600_000u64);
        assert_eq!(
            value["latest"],
            serde_json::json!({"stream": 9, "sequence": 7})
        );
        assert_eq!(
            value["retention"],
            serde_json::json!({"max_events": 256, "max_age_ms": 300_000, "oldest": {"stream": 9, "sequence": 5}})
        );
        assert_eq!(value["heartbeat_ms"], 25_000);
        assert_eq!(serde_json::from_str::<Hello>(&text).unwrap(), hello);
        // Heartbeats off, no position, no deadline: nulls, not absent members.
        let config = TransportConfig::builder()
            .heartbeat_frames(false)
            .build()
            .unwrap();
        let bare: serde_json::Value =
            serde_json::to_value(Hello::new(&user, &connection, None, None, &config)).unwrap();
        for member in ["token_expires_at", "latest", "retention", "heartbeat_ms"] {
            assert_eq!(bare[member], serde_json::Value::Null, "{member}");
        }
    }

    #[test]
    fn only_the_two_control_types_are_taken_from_the_application() {
        assert_eq!(
            client_control(r#"{"type":"heartbeat"}"#),
            Some(ClientControl::Heartbeat)
        );
        assert_eq!(
            client_control(r#"{"token":"a.b.c","type":"refresh_token"}"#),
            Some(ClientControl::RefreshToken("a.b.c".into()))
        );
        assert_eq!(
            client_control(r#"{"type":"refresh_token","token":7}"#),
            Some(ClientControl::MalformedRefresh)
        );
        for application in [
            r#"{"type":"run","prompt":"say \"heartbeat\""}"#,
            r#"{"type":"run"}"#,
            r#"not json "heartbeat""#,
            r#"["heartbeat"]"#,
        ] {
            assert_eq!(client_control(application), None, "{application}");
        }
    }

    #[test]
    fn server_frames_are_json_with_their_type() {
        let beat: serde_json::Value = serde_json::from_str(heartbeat_frame().as_str()).unwrap();
        assert_eq!(beat["type"], "heartbeat");
        assert!(beat["ts"].as_u64().unwrap() > 0);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let refreshed: serde_json::Value =
            serde_json::from_str(token_refreshed_frame(Some(at)).as_str()).unwrap();
        assert_eq!(refreshed["type"], "token_refreshed");
        assert_eq!(refreshed["expires_at"], 10_000);
        let unbounded: serde_json::Value =
            serde_json::from_str(token_refreshed_frame(None).as_str()).unwrap();
        assert_eq!(unbounded["expires_at"], serde_json::Value::Null);
    }
}
