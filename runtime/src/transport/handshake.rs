//! The server side of the RFC 6455 opening handshake, shared by both
//! adapters: which requests are WebSocket upgrades, the `101` response's
//! headers, and the tungstenite configuration a socket is built with.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tungstenite::protocol::WebSocketConfig;

use super::auth::UpgradeRequest;
use super::config::TransportConfig;
use super::service::Admission;

/// Checks that a request is a WebSocket upgrade (RFC 6455, 4.2.1); the
/// problem, worded for the client, when it is not. (WebSockets over HTTP/2,
/// RFC 8441, are not served: browsers open them over HTTP/1.1.)
pub(crate) fn check_upgrade(
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    if version != Version::HTTP_11 {
        return Err("websocket upgrades need HTTP/1.1");
    }
    if method != Method::GET {
        return Err("the method must be GET");
    }
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(http::header::UPGRADE, "websocket") {
        return Err("missing `Upgrade: websocket`");
    }
    if !has_token(http::header::CONNECTION, "upgrade") {
        return Err("missing `Connection: upgrade`");
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("`Sec-WebSocket-Version` must be 13");
    }
    if headers.get(http::header::SEC_WEBSOCKET_KEY).is_none() {
        return Err("missing `Sec-WebSocket-Key`");
    }
    Ok(())
}

/// The headers of the `101 Switching Protocols` answer to a checked upgrade
/// request, besides `Upgrade` and `Connection`: the accept key, and the
/// admitted subprotocol when the client offered it (a browser fails the
/// connection on a protocol it did not offer).
pub(crate) fn accept_headers(
    request: &UpgradeRequest<'_>,
    admission: &Admission,
) -> Vec<(HeaderName, String)> {
    let key = request
        .headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let mut headers = vec![(
        http::header::SEC_WEBSOCKET_ACCEPT,
        tungstenite::handshake::derive_accept_key(key),
    )];
    if let Some(protocol) = &admission.identity.subprotocol
        && request
            .offered_protocols()
            .any(|offered| offered == protocol)
    {
        headers.push((http::header::SEC_WEBSOCKET_PROTOCOL, protocol.clone()));
    }
    headers
}

/// tungstenite's configuration for a socket of this transport: its buffer
/// sizes and size limits.
pub(crate) fn websocket_config(config: &TransportConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size())
        .write_buffer_size(config.write_buffer_size())
        .max_message_size(Some(config.max_message_size()))
        .max_frame_size(Some(config.max_frame_size()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        headers.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        headers
    }

    #[test]
    fn an_upgrade_request_passes_and_each_missing_part_is_named() {
        assert_eq!(
            check_upgrade(Version::HTTP_11, &Method::GET, &upgrade_headers()),
            Ok(())
        );
        assert_eq!(
            check_upgrade(Version::HTTP_10, &Method::GET, &upgrade_headers()),
            Err("websocket upgrades need HTTP/1.1")
        );
        assert_eq!(
            check_upgrade(Version::HTTP_2, &Method::GET, &upgrade_headers()),
            Err("websocket upgrades need HTTP/1.1")
        );
        assert_eq!(
            check_upgrade(Version::HTTP_11, &Method::POST, &upgrade_headers()),
            Err("the method must be GET")
        );
        let without = |name: &str| {
            let mut headers = upgrade_headers();
            headers.remove(name);
            check_upgrade(Version::HTTP_11, &Method::GET, &headers)
        };
        assert_eq!(without("upgrade"), Err("missing `Upgrade: websocket`"));
        assert_eq!(without("connection"), Err("missing `Connection: upgrade`"));
        assert_eq!(
            without("sec-websocket-version"),
            Err("`Sec-WebSocket-Version` must be 13")
        );
        assert_eq!(
            without("sec-websocket-key"),
            Err("missing `Sec-WebSocket-Key`")
        );
        let mut old = upgrade_headers();
        old.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(
            check_upgrade(Version::HTTP_11, &Method::GET, &old),
            Err("`Sec-WebSocket-Version` must be 13")
        );
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_and_only_an_offered_protocol_is_echoed() {
        let mut headers = upgrade_headers();
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("agent.v1, bearer.xyz"),
        );
        let uri: http::Uri = "/ws".parse().unwrap();
        let request = UpgradeRequest::new(&uri, &headers);
        let mut admission = Admission {
            identity: crate::transport::Identity::new(crate::UserId::new("alice").unwrap()),
            thread_id: None,
            resume: None,
            resume_print: None,
            ticket: Default::default(),
        };
        admission.identity.subprotocol = Some("agent.v1".into());
        let accepted = accept_headers(&request, &admission);
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            accepted[0],
            (
                http::header::SEC_WEBSOCKET_ACCEPT,
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()
            )
        );
        assert_eq!(
            accepted[1],
            (http::header::SEC_WEBSOCKET_PROTOCOL, "agent.v1".to_owned())
        );
        admission.identity.subprotocol = Some("never.offered".into());
        assert_eq!(accept_headers(&request, &admission).len(), 1);
    }
}
