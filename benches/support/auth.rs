//! What the transport benches share: the authenticator their servers
//! verify with, and the token and upgrade request their clients send.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use websocket_manager::transport::{JwtAuthenticator, encode_hs256};

/// The HS256 secret of every bench server.
pub const SECRET: &[u8] = b"benchmark secret, at least 32 bytes";

/// The authenticator of every bench server: HS256 with [`SECRET`].
pub fn authenticator() -> JwtAuthenticator {
    JwtAuthenticator::hs256(SECRET).expect("the bench secret is 32 bytes or more")
}

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    encode_hs256(&json!({"sub": user, "exp": now + 3600}), SECRET)
}

/// `GET ws://<addr>/ws` with `Authorization: Bearer <token for user>`.
pub fn upgrade_request(addr: SocketAddr, user: &str) -> Request {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("a ws:// URL of a socket address");
    let bearer = format!("Bearer {}", token(user));
    request.headers_mut().insert(
        "authorization",
        bearer.parse().expect("a token is a valid header value"),
    );
    request
}
