//! The tokio-tungstenite adapter (feature `tungstenite`): [`accept`] runs the
//! whole authenticated upgrade on any byte stream (a `TcpStream` from your
//! own accept loop), and [`TungsteniteSocket`] makes a
//! `tokio_tungstenite::WebSocketStream` a [`WireSocket`](super::WireSocket).
//!
//! `accept` reads the HTTP request head itself (bounded in size and time),
//! so the asynchronous [`Authenticator`](super::Authenticator) runs before
//! the `101` is written: a refused request gets its 401/403 and no socket.
//!
//! [`serve`] is the whole accept loop. [`accept`] turns Nagle's algorithm
//! off on a `tokio::net::TcpStream` (`TCP_NODELAY`: otherwise small frames
//! wait for the peer's delayed ACK, up to 40 ms on Linux); on another
//! stream type, set the equivalent yourself. A loop of your own:
//!
//! ```no_run
//! # async fn run(service: websocket_manager::transport::WebSocketService) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let service = service.clone();
//!     tokio::spawn(async move {
//!         if let Err(error) = websocket_manager::transport::tungstenite::accept(&service, stream).await {
//!             tracing::info!(%error, "upgrade failed");
//!         }
//!     });
//! }
//! # }
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::Role;

use super::auth::{AuthError, UpgradeRequest};
use super::handshake::{accept_headers, check_upgrade, websocket_config};
use super::service::{ConnectionOutcome, WebSocketService};
pub use super::tungstenite_socket::TungsteniteSocket;

/// The longest HTTP request head [`accept`] reads.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long [`accept`] waits for the request head by default; set it with
/// [`TransportConfig::header_read_timeout`](super::TransportConfig::header_read_timeout).
pub const HANDSHAKE_TIMEOUT: Duration = super::config::DEFAULT_HEADER_READ_TIMEOUT;
const MAX_HEADERS: usize = 64;

/// Why [`accept`] did not serve a socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// Reading the request or writing the response failed.
    #[error("i/o error during the upgrade: {0}")]
    Io(#[from] std::io::Error),
    /// The request head did not arrive within the header-read timeout.
    #[error("the request head did not arrive in time")]
    HandshakeTimeout,
    /// The request head exceeded [`MAX_REQUEST_HEAD`] (answered 431).
    #[error("the request head exceeds {MAX_REQUEST_HEAD} bytes")]
    HeadTooLarge,
    /// Not a valid WebSocket upgrade request (answered 400).
    #[error("not a websocket upgrade request: {0}")]
    NotWebSocket(&'static str),
    /// Refused by the Origin policy or the authenticator (answered with its status).
    #[error(transparent)]
    Refused(AuthError),
}

/// Sets `TCP_NODELAY` when `stream` is a `tokio::net::TcpStream`, reads an
/// HTTP upgrade request from it (within
/// [`TransportConfig::header_read_timeout`](super::TransportConfig::header_read_timeout)),
/// admits it through the
/// service (Origin, authenticator, thread), completes the handshake with the
/// service's size limits, and serves the socket until it ends.
///
/// # Errors
///
/// An [`AcceptError`] when no socket was served; the client has already
/// been answered (400, 401, 403, 431, or 503 with `Retry-After`) where it
/// still listens.
pub async fn accept<S>(
    service: &WebSocketService,
    mut stream: S,
) -> Result<ConnectionOutcome, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(tcp) = (&stream as &dyn std::any::Any).downcast_ref::<tokio::net::TcpStream>()
        && let Err(error) = tcp.set_nodelay(true)
    {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let head_timeout = service.config().header_read_timeout();
    let (head, leftover) = match tokio::time::timeout(head_timeout, read_head(&mut stream)).await {
        Ok(Ok(read)) => read,
        Ok(Err(AcceptError::HeadTooLarge)) => {
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            respond(
                &mut stream,
                status,
                status.canonical_reason().unwrap_or("Refused"),
            )
            .await;
            return Err(AcceptError::HeadTooLarge);
        }
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(AcceptError::HandshakeTimeout),
    };
    let (uri, headers) = match parse_upgrade(&head) {
        Ok(parsed) => parsed,
        Err(problem) => {
            respond(
                &mut stream,
                StatusCode::BAD_REQUEST,
                &format!("Bad Request: {problem}"),
            )
            .await;
            return Err(AcceptError::NotWebSocket(problem));
        }
    };
    let request = UpgradeRequest::new(&uri, &headers);
    let admission = match service.admit(&request).await {
        Ok(admission) => admission,
        Err(error) => {
            let retry_after = error
                .retry_after_header()
                .map(|secs| format!("Retry-After: {secs}\r\n"))
                .unwrap_or_default();
            respond_with(
                &mut stream,
                error.status(),
                &retry_after,
                &error.public_message(),
            )
            .await;
            return Err(AcceptError::Refused(error));
        }
    };
    let mut response = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    for (name, value) in accept_headers(&request, &admission) {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // The request is done with: free it rather than keep it (the token
    // among its headers) for the connection's whole life.
    drop((head, uri, headers, response));

    let socket = WebSocketStream::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(websocket_config(service.config())),
    )
    .await;
    Ok(service
        .serve(TungsteniteSocket::new(socket), admission)
        .await)
}

/// Accepts connections on `listener` forever, each on its own task running
/// [`accept`]. An accept error is logged as an error and retried after a
/// pause (a second when the process is out of file descriptors: set
/// [`max_connections`](super::WebSocketServiceBuilder::max_connections)
/// below `ulimit -n` so that clients are answered `503` instead); a failed
/// upgrade is logged at debug level.
///
/// ```no_run
/// # async fn run(service: websocket_manager::transport::WebSocketService) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// tokio::spawn(websocket_manager::transport::tungstenite::serve(listener, service));
/// # Ok(()) }
/// ```
pub async fn serve(listener: tokio::net::TcpListener, service: WebSocketService) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                super::accept::accept_failed(&error).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(error) = accept(&service, stream).await {
                tracing::debug!(%error, %peer, "websocket upgrade failed");
            }
        });
    }
}

/// Reads up to the end of the request head; returns the head and whatever
/// followed it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Vec<u8>, Vec<u8>), AcceptError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(AcceptError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let searched_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer[searched_from..]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            let end = searched_from + position + 4;
            let leftover = buffer.split_off(end);
            return Ok((buffer, leftover));
        }
        if buffer.len() > MAX_REQUEST_HEAD {
            return Err(AcceptError::HeadTooLarge);
        }
    }
}

/// Parses and checks a WebSocket upgrade request head (RFC 6455, 4.2.1).
fn parse_upgrade(head: &[u8]) -> Result<(Uri, HeaderMap), &'static str> {
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut raw_headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("malformed HTTP request"),
    }
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| "invalid method")?;
    let uri: Uri = request
        .path
        .ok_or("missing request target")?
        .parse()
        .map_err(|_| "invalid request target")?;
    let mut headers = HeaderMap::new();
    for header in request.headers.iter() {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    check_upgrade(version, &method, &headers)?;
    Ok((uri, headers))
}

/// Answers a refused upgrade with its status and `body`, and closes.
async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: StatusCode, body: &str) {
    respond_with(stream, status, "", body).await;
}

/// [`respond`] with `extra_headers`, each line ending in CRLF.
async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: StatusCode,
    extra_headers: &str,
    body: &str,
) {
    let reason = status.canonical_reason().unwrap_or("Refused");
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        status.as_u16(),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /ws?thread=t1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_valid_upgrade_parses() {
        let (uri, headers) = parse_upgrade(GOOD).unwrap();
        assert_eq!(uri.path(), "/ws");
        assert_eq!(headers.get("host").unwrap(), "127.0.0.1");
    }

    #[test]
    fn non_upgrade_requests_are_refused_with_a_reason() {
        let post = String::from_utf8_lossy(GOOD).replacen("GET", "POST", 1);
        assert_eq!(
            parse_upgrade(post.as_bytes()),
            Err("the method must be GET")
        );
        let no_upgrade = String::from_utf8_lossy(GOOD).replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            parse_upgrade(no_upgrade.as_bytes()),
            Err("missing `Upgrade: websocket`")
        );
        let old = String::from_utf8_lossy(GOOD).replace("Version: 13", "Version: 8");
        assert_eq!(
            parse_upgrade(old.as_bytes()),
            Err("`Sec-WebSocket-Version` must be 13")
        );
    }

    #[tokio::test]
    async fn the_head_is_split_from_what_follows() {
        let mut input = GOOD.to_vec();
        input.extend_from_slice(b"\x81\x00");
        let mut reader = &input[..];
        let (head, leftover) = read_head(&mut reader).await.unwrap();
        assert_eq!(head, GOOD);
        assert_eq!(leftover, b"\x81\x00");
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let input = vec![b'a'; MAX_REQUEST_HEAD + 2048];
        let mut reader = &input[..];
        assert!(matches!(
            read_head(&mut reader).await,
            Err(AcceptError::HeadTooLarge)
        ));
    }
}
