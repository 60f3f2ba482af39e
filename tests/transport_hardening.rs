//! End-to-end tests of the transport against hostile or broken clients:
//! close codes per RFC 6455 (1007, 1002, 1003), error frames and their
//! budget, token expiry on a live connection, the header-read timeout, and
//! `TCP_NODELAY` on accepted sockets. Every test runs on both adapters (axum
//! and tokio-tungstenite) over real loopback sockets; malformed frames are
//! written by hand on a raw `TcpStream`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use websocket_manager::transport::{
    HandlerError, InboundContext, InboundMessage, TransportConfig, handler_fn,
};
use websocket_manager::{ThreadId, WebSocketManager, close};
use websocket_manager_test_support::e2e::*;

/// The test server (axum) and a tokio-tungstenite accept loop on the same
/// service: the addresses of both adapters.
async fn both_adapters(server: &TestServer) -> [SocketAddr; 2] {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tungstenite_addr = listener.local_addr().unwrap();
    let task = tokio::spawn(websocket_manager::transport::tungstenite::serve(
        listener,
        server.service.clone(),
    ));
    // Ends with the test's runtime.
    drop(task);
    [server.addr, tungstenite_addr]
}

/// An application that understands `{"type": "echo", "text": ...}` and
/// rejects anything else through `InboundMessage::json`.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Request {
    Echo { text: String },
}

fn echo_options(transport: TransportConfig) -> ServerOptions {
    let handler = handler_fn(
        |context: InboundContext, message: InboundMessage| async move {
            let Request::Echo { text } = message.json::<Request>()?;
            context
                .manager()
                .send_to_user(context.user_id(), json!({"type": "echo", "text": text}))
                .await?;
            Ok::<(), HandlerError>(())
        },
    );
    ServerOptions {
        transport,
        handler: Arc::new(handler),
        ..ServerOptions::default()
    }
}

/// Reads an HTTP response head, byte by byte so nothing after it is taken.
async fn read_response_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "no end of the response head");
        tokio::time::timeout(STEP, stream.read_exact(&mut byte))
            .await
            .expect("the response head did not arrive")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Upgrades a raw TCP stream by hand and returns it right after the `101`.
async fn raw_upgrade(addr: SocketAddr, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token(user, 600)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_response_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    stream
}

/// Reads server frames (unmasked, short) until a close frame; returns its code.
async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    for _ in 0..16 {
        let mut header = [0u8; 2];
        tokio::time::timeout(STEP, stream.read_exact(&mut header))
            .await
            .expect("no frame within the step timeout")
            .ok()?;
        let len = match header[1] & 0x7f {
            126 => {
                let mut extended = [0u8; 2];
                stream.read_exact(&mut extended).await.ok()?;
                usize::from(u16::from_be_bytes(extended))
            }
            127 => panic!("unexpectedly long frame"),
            short => usize::from(short),
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        if header[0] & 0x0f == 0x8 {
            return (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    panic!("no close frame among the first 16 frames");
}

/// A masked client frame (FIN set) with this opcode and payload (< 126 bytes).
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Sends `request` on a fresh connection; returns the response's status
/// line and body (`Content-Length` bytes).
async fn raw_response(addr: SocketAddr, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_response_head(&mut stream).await;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a refusal has a Content-Length");
    let mut body = vec![0u8; length];
    tokio::time::timeout(STEP, stream.read_exact(&mut body))
        .await
        .expect("the body did not arrive")
        .unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn requests_that_are_not_upgrades_get_400_naming_what_is_missing() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let bearer = format!("Authorization: Bearer {}\r\n", token("uma", 600));
        let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let cases = [
            (
                format!("GET /ws HTTP/1.1\r\nHost: x\r\n{bearer}\r\n"),
                "missing `Upgrade: websocket`",
            ),
            (
                format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{bearer}\r\n"),
                "missing `Connection: upgrade`",
            ),
            (
                format!(
                    "GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 8\r\n{key}{bearer}\r\n"
                ),
                "`Sec-WebSocket-Version` must be 13",
            ),
            (
                format!(
                    "GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n{bearer}\r\n"
                ),
                "missing `Sec-WebSocket-Key`",
            ),
            (
                format!(
                    "GET /ws HTTP/1.0\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n{key}{bearer}\r\n"
                ),
                "websocket upgrades need HTTP/1.1",
            ),
        ];
        for addr in both_adapters(&server).await {
            for (request, problem) in &cases {
                let (status, body) = raw_response(addr, request).await;
                assert!(
                    status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.0 400"),
                    "{addr}: {status} for {request:?}"
                );
                assert_eq!(body, format!("Bad Request: {problem}"), "{addr}");
            }
            // A real client is still served.
            let mut client = raw_upgrade(addr, "uma").await;
            server.wait_connections("uma", 1).await;
            client.shutdown().await.unwrap();
            server.wait_connections("uma", 0).await;
        }
        assert!(server.manager.index_sizes().holds_no_connection());
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_not_1011() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        for addr in both_adapters(&server).await {
            let mut raw = raw_upgrade(addr, "alice").await;
            raw.write_all(&masked_frame(0x1, &[b'o', b'k', 0xff, 0xfe]))
                .await
                .unwrap();
            assert_eq!(
                raw_close_code(&mut raw).await,
                Some(close::INVALID_PAYLOAD),
                "adapter at {addr}"
            );
            // The same through a real client library.
            let mut client = connect(addr, "alice", None).await;
            client
                .send(Message::Frame(Frame::message(
                    vec![0xc3, 0x28],
                    OpCode::Data(Data::Text),
                    true,
                )))
                .await
                .unwrap();
            assert_eq!(
                expect_close(&mut client).await.map(|(code, _)| code),
                Some(1007)
            );
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        for addr in both_adapters(&server).await {
            // RFC 6455 5.1: a client frame must be masked.
            let mut unmasked = raw_upgrade(addr, "bob").await;
            unmasked.write_all(b"\x81\x02hi").await.unwrap();
            assert_eq!(
                raw_close_code(&mut unmasked).await,
                Some(close::PROTOCOL_ERROR),
                "unmasked frame, adapter at {addr}"
            );
            // Reserved bits set without a negotiated extension.
            let mut reserved = raw_upgrade(addr, "bob").await;
            let mut frame = masked_frame(0x1, b"hi");
            frame[0] |= 0x40;
            reserved.write_all(&frame).await.unwrap();
            assert_eq!(
                raw_close_code(&mut reserved).await,
                Some(1002),
                "reserved bit, adapter at {addr}"
            );
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn binary_messages_close_with_1003_unless_allowed() {
    bounded(async {
        let server = TestServer::start(echo_options(TransportConfig::default())).await;
        for addr in both_adapters(&server).await {
            let mut client = connect(addr, "carol", None).await;
            client.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
            assert_eq!(
                expect_close(&mut client).await,
                Some((1003, "binary messages are not accepted".to_owned()))
            );
        }
        server.assert_indexes_empty().await;

        // Allowed: the binary message reaches the handler (which answers
        // with an error frame, since it wants JSON) and the socket stays.
        let config = TransportConfig::builder()
            .binary_messages(true)
            .build()
            .unwrap();
        let server = TestServer::start(echo_options(config)).await;
        let mut client = connect(server.addr, "carol", None).await;
        client.send(Message::binary(vec![1u8])).await.unwrap();
        assert_eq!(next_json(&mut client).await["code"], "invalid_message");
        send_text(
            &mut client,
            json!({"type": "echo", "text": "still here"}).to_string(),
        )
        .await;
        assert_eq!(next_json(&mut client).await["text"], "still here");
        close(client).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn bad_messages_get_an_error_frame_and_a_flood_is_closed_with_1008() {
    bounded(async {
        let config = TransportConfig::builder()
            .error_frames(3, Duration::from_secs(60))
            .build()
            .unwrap();
        let server = TestServer::start(echo_options(config)).await;
        for addr in both_adapters(&server).await {
            let mut client = connect(addr, "dave", None).await;
            send_text(&mut client, "{not json".to_owned()).await;
            let error = next_json(&mut client).await;
            assert_eq!(error["type"], "error");
            assert_eq!(error["code"], "malformed_json");
            assert!(error["detail"].as_str().unwrap().contains("line 1"));
            send_text(&mut client, json!({"type": "dance"}).to_string()).await;
            assert_eq!(next_json(&mut client).await["code"], "unknown_type");
            // A good message is still served between bad ones.
            send_text(
                &mut client,
                json!({"type": "echo", "text": "hi"}).to_string(),
            )
            .await;
            assert_eq!(
                next_json(&mut client).await,
                json!({"type": "echo", "text": "hi"})
            );
            // A flood: one more error frame (the budget is 3), then 1008.
            for _ in 0..50 {
                send_text(&mut client, "garbage".to_owned()).await;
            }
            assert_eq!(next_json(&mut client).await["code"], "malformed_json");
            assert_eq!(
                expect_close(&mut client).await,
                Some((1008, "too many invalid messages".to_owned()))
            );
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_is_closed_with_4401_when_its_token_expires() {
    bounded(async {
        let server = TestServer::start(echo_options(TransportConfig::default())).await;
        for addr in both_adapters(&server).await {
            // `exp` has a resolution of one second: this token ends in 1–2 s.
            let (mut short, _) = try_connect(addr, Connect::new("/ws", Some(token("erin", 2))))
                .await
                .unwrap();
            let mut long = connect(addr, "erin", None).await;
            server.wait_connections("erin", 2).await;
            let started = tokio::time::Instant::now();
            send_text(&mut short, json!({"type": "echo", "text": "a"}).to_string()).await;
            assert_eq!(next_json(&mut short).await["text"], "a");
            assert_eq!(next_json(&mut long).await["text"], "a");
            assert_eq!(
                expect_close(&mut short).await,
                Some((close::TOKEN_EXPIRED, "token expired".to_owned()))
            );
            assert!(
                started.elapsed() >= Duration::from_millis(500),
                "closed before the token expired"
            );
            // The other connection of the user, with a valid token, lives on.
            server.wait_connections("erin", 1).await;
            send_text(&mut long, json!({"type": "echo", "text": "b"}).to_string()).await;
            assert_eq!(next_json(&mut long).await["text"], "b");
            close(long).await;
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn stalled_partial_upgrades_are_dropped_while_real_clients_are_served() {
    bounded(async {
        let config = TransportConfig::builder()
            .header_read_timeout(Duration::from_millis(400))
            .build()
            .unwrap();
        let server = TestServer::start(ServerOptions {
            transport: config,
            ..ServerOptions::default()
        })
        .await;
        for addr in both_adapters(&server).await {
            let mut stalled = Vec::new();
            for _ in 0..100 {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
                    .await
                    .unwrap();
                stalled.push(stream);
            }
            // Served meanwhile.
            let mut client = connect(addr, "frank", Some("t-f")).await;
            server.wait_connections("frank", 1).await;
            server
                .manager
                .send_to_thread(&ThreadId::new("t-f").unwrap(), json!({"type": "hi"}))
                .await
                .unwrap();
            assert_eq!(next_json(&mut client).await["type"], "hi");
            // Every stalled one is dropped by the server (EOF or reset).
            for stream in &mut stalled {
                let mut buffer = [0u8; 64];
                let read = tokio::time::timeout(STEP, stream.read(&mut buffer))
                    .await
                    .expect("a stalled upgrade was still open after the step timeout");
                assert!(
                    matches!(read, Ok(0) | Err(_)),
                    "unexpected answer to a stalled upgrade: {read:?}"
                );
            }
            // The real client, past the header-read timeout, is still open.
            server
                .manager
                .send_to_thread(&ThreadId::new("t-f").unwrap(), json!({"type": "later"}))
                .await
                .unwrap();
            assert_eq!(next_json(&mut client).await["type"], "later");
            close(client).await;
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn the_axum_listener_turns_nagle_off() {
    use axum::serve::Listener;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = websocket_manager::transport::axum::WebSocketListener::new(listener);
    let client = TcpStream::connect(addr).await.unwrap();
    assert!(!client.nodelay().unwrap(), "a fresh socket has Nagle on");
    let (accepted, _) = tokio::time::timeout(STEP, listener.accept()).await.unwrap();
    assert!(accepted.get_ref().nodelay().unwrap());
}

#[tokio::test]
async fn the_tungstenite_accept_turns_nagle_off() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = server.service.clone();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // A second handle on the same socket, to look at it after the upgrade.
            let std_stream = stream.into_std().unwrap();
            let observer = std_stream.try_clone().unwrap();
            let stream = TcpStream::from_std(std_stream).unwrap();
            assert!(!observer.nodelay().unwrap());
            let serving = tokio::spawn(async move {
                websocket_manager::transport::tungstenite::accept(&service, stream).await
            });
            let _ = seen_tx.send(observer);
            let _ = serving.await;
        });
        let client = connect(addr, "gina", None).await;
        let observer = tokio::time::timeout(STEP, seen_rx).await.unwrap().unwrap();
        assert!(observer.nodelay().unwrap());
        close(client).await;
        server.assert_indexes_empty().await;
    })
    .await;
}
