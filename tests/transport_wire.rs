//! The transport as a WebSocket peer sees it (what the Autobahn suite of
//! `.ci/autobahn` checks), on both adapters: binary messages go out as
//! binary, and what the queue accepted is written before the close frame.
//! Real loopback sockets, real tokio-tungstenite clients.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use websocket_manager::transport::{
    IgnoreMessages, InboundContext, InboundMessage, MessageHandler, TransportConfig, handler_fn,
};
use websocket_manager::{UserId, WebSocketManager};
use websocket_manager_test_support::e2e::*;

/// The test server (axum adapter) plus a tokio-tungstenite adapter
/// listener on the same service: the address of each, by name.
async fn both_adapters(
    handler: Arc<dyn MessageHandler>,
    transport: TransportConfig,
) -> (TestServer, [(&'static str, SocketAddr); 2]) {
    let server = TestServer::start(ServerOptions {
        handler,
        transport,
        ..ServerOptions::default()
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tungstenite = listener.local_addr().unwrap();
    tokio::spawn(websocket_manager::transport::tungstenite::serve(
        listener,
        server.service.clone(),
    ));
    let addrs = [("axum", server.addr), ("tungstenite", tungstenite)];
    (server, addrs)
}

fn echo() -> Arc<dyn MessageHandler> {
    Arc::new(handler_fn(
        |context: InboundContext, message: InboundMessage| async move {
            match message {
                InboundMessage::Text(text) => context.socket().try_send(text)?,
                InboundMessage::Binary(bytes) => context.socket().send_binary(bytes)?,
            }
            Ok(())
        },
    ))
}

fn binary_allowed() -> TransportConfig {
    TransportConfig::builder()
        .binary_messages(true)
        .build()
        .unwrap()
}

/// Reads data messages (pings skipped) until the close frame; returns them
/// and the close code (`None`: the stream ended without one).
async fn read_to_close(client: &mut Client) -> (Vec<Message>, Option<u16>) {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(STEP, client.next())
            .await
            .expect("nothing arrived within the step timeout");
        match message {
            Some(Ok(Message::Close(frame))) => {
                return (seen, frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => seen.push(other),
            Some(Err(_)) | None => return (seen, None),
        }
    }
}

#[tokio::test]
async fn a_handler_echoes_binary_as_binary_on_both_adapters() {
    bounded(async {
        let (server, addrs) = both_adapters(echo(), binary_allowed()).await;
        for (adapter, addr) in addrs {
            let mut client = connect(addr, adapter, None).await;
            let audio = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>());
            client.send(Message::Binary(audio.clone())).await.unwrap();
            client.send(Message::text("after")).await.unwrap();
            let reply = tokio::time::timeout(STEP, client.next()).await.unwrap();
            assert_eq!(reply.unwrap().unwrap(), Message::Binary(audio), "{adapter}");
            let reply = tokio::time::timeout(STEP, client.next()).await.unwrap();
            assert_eq!(reply.unwrap().unwrap(), Message::text("after"), "{adapter}");
            close(client).await;
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_sends_n_messages_then_closes_gets_n_replies_before_the_close() {
    const N: usize = 200;
    bounded(async {
        let (server, addrs) = both_adapters(echo(), binary_allowed()).await;
        for (adapter, addr) in addrs {
            for round in 0..3 {
                let mut client = connect(addr, adapter, None).await;
                // One write: the messages and the close arrive together.
                for n in 0..N {
                    client.feed(Message::text(format!("{n}"))).await.unwrap();
                }
                client
                    .feed(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "done".into(),
                    })))
                    .await
                    .unwrap();
                client.flush().await.unwrap();
                let (replies, code) = read_to_close(&mut client).await;
                let expected: Vec<Message> =
                    (0..N).map(|n| Message::text(format!("{n}"))).collect();
                assert_eq!(
                    replies.len(),
                    N,
                    "{adapter}, round {round}: {} of {N} replies before the close",
                    replies.len()
                );
                assert_eq!(replies, expected, "{adapter}, round {round}");
                assert_eq!(code, Some(1000), "{adapter}, round {round}");
            }
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn frames_queued_before_a_protocol_error_are_written_before_the_1002_close() {
    // 100 frames of 64 KiB (more than the kernel buffers hold) queued by the server to a client that is not
    // reading yet: the writer is stalled on TCP when the client's bad frame
    // arrives. The 1002 close waits for them (within the close timeout).
    const FRAMES: usize = 100;
    bounded(async {
        let (server, addrs) = both_adapters(Arc::new(IgnoreMessages), binary_allowed()).await;
        for (adapter, addr) in addrs {
            let user = format!("stalled-{adapter}");
            let (mut client, _) = try_connect(
                addr,
                Connect {
                    recv_buffer: Some(4096),
                    ..Connect::new("/ws", Some(token(&user, 600)))
                },
            )
            .await
            .unwrap();
            server.wait_connections(&user, 1).await;
            let padding = "x".repeat(64 * 1024 - 64);
            for n in 0..FRAMES {
                let sent = server
                    .manager
                    .send_to_user(
                        &UserId::new(user.as_str()).unwrap(),
                        json!({"n": n, "pad": padding}),
                    )
                    .await
                    .unwrap();
                assert_eq!(sent.recipients(), 1, "{adapter}: frame {n} not queued");
            }
            // A data frame with a reserved bit set: a protocol violation.
            let mut bad =
                Frame::message(Bytes::from_static(b"bad"), OpCode::Data(Data::Text), true);
            bad.header_mut().rsv2 = true;
            client.send(Message::Frame(bad)).await.unwrap();
            let (seen, code) = read_to_close(&mut client).await;
            let frames: Vec<serde_json::Value> = seen
                .iter()
                .map(|m| serde_json::from_str(m.to_text().unwrap()).unwrap())
                .collect();
            assert_eq!(
                frames[0]["type"], "hello",
                "{adapter}: the hello comes first"
            );
            let numbers: Vec<u64> = frames[1..]
                .iter()
                .map(|value| value["n"].as_u64().unwrap())
                .collect();
            assert_eq!(
                numbers,
                (0..FRAMES as u64).collect::<Vec<_>>(),
                "{adapter}: every accepted frame, in order, before the close"
            );
            assert_eq!(code, Some(1002), "{adapter}");
        }
        server.assert_indexes_empty().await;
    })
    .await;
}
