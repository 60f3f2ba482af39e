//! What the transport benches share: the authenticator their servers
//! verify with (the end-to-end tests' own), and the token and upgrade
//! request their clients send.

use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

pub use crate::e2e::authenticator;

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    crate::e2e::token(user, 3600)
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

/// The CPU's model name (`lscpu`'s "Model name"), for the benches' reports:
/// figures from another CPU do not carry over.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
