//! What the transport benches share: the secret their servers verify and
//! the token and upgrade request their clients send.
#![allow(dead_code)]

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// The HS256 secret of every bench server.
pub const SECRET: &[u8] = b"benchmark secret, at least 32 bytes";

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    encode(
        &Header::default(),
        &json!({"sub": user, "exp": get_current_timestamp() + 3600}),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("HS256 signing of a fixed claim set")
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
