//! End-to-end tests of the transport: a real axum server on 127.0.0.1, real
//! tokio-tungstenite clients, the reference `UnifiedWebSocketManager`.
//! Every test is bounded in time and ends by checking that the manager's
//! indexes are empty (no leaked connection).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use websocket_manager::transport::{
    EndReason, HandlerError, InboundContext, InboundMessage, TransportConfig, handler_fn,
};
use websocket_manager::{
    Delivery, ThreadId, UserId, WebSocketManager,
    events::AGENT_EVENTS,
    managers::{ManagerConfig, SlowConsumerPolicy},
};
use websocket_manager_test_support::e2e::*;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// A server with small queues under the drop policy (so only the transport's
/// timeouts can free a socket), and a client with a tiny receive buffer that
/// never reads.
async fn drop_policy_server_with_stalled_client(
    write_timeout: Duration,
    close_timeout: Duration,
) -> (TestServer, Client) {
    let server = TestServer::start(ServerOptions {
        manager: ManagerConfig::builder()
            .queue_capacity(16)
            .queue_max_bytes(64 * 1024)
            .history_capacity(8)
            .history_max_bytes(32 * 1024)
            .slow_consumer_policy(SlowConsumerPolicy::DropMessage)
            .build()
            .unwrap(),
        transport: TransportConfig::builder()
            .write_timeout(write_timeout)
            .close_timeout(close_timeout)
            .queue_limits(websocket_manager::socket::QueueLimits::new(16, 64 * 1024))
            .build()
            .unwrap(),
        ..ServerOptions::default()
    })
    .await;
    let (stalled, _) = try_connect(
        server.addr,
        Connect {
            recv_buffer: Some(4096),
            ..Connect::new("/ws", Some(token("stalled", 600)))
        },
    )
    .await
    .unwrap();
    (server, stalled)
}

/// Reads JSON messages until one with `"type": "end"`; returns those before it.
async fn read_until_end(client: &mut Client) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let value = next_json(client).await;
        if value["type"] == "end" {
            return seen;
        }
        seen.push(value);
    }
}

#[tokio::test]
async fn two_users_two_tabs_each_get_exactly_their_messages() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut alice_1 = connect(server.addr, "alice", Some("thread-a1")).await;
        let mut alice_2 = connect(server.addr, "alice", Some("thread-a2")).await;
        let mut bob_1 = connect(server.addr, "bob", Some("thread-b1")).await;
        let mut bob_2 = connect(server.addr, "bob", None).await;
        server.wait_connections("alice", 2).await;
        server.wait_connections("bob", 2).await;
        let manager = &server.manager;

        let to_alice = manager
            .send_to_user(&user("alice"), json!({"type": "note", "to": "alice"}))
            .await
            .unwrap();
        assert_eq!(to_alice.recipients(), 2);
        let critical = manager
            .emit_critical_event(&user("bob"), "agent_started", json!({"run": 1}))
            .await
            .unwrap();
        assert_eq!(critical.recipients(), 2);
        let thread = manager
            .send_to_thread(
                &ThreadId::new("thread-a1").unwrap(),
                json!({"type": "thread", "t": "a1"}),
            )
            .await
            .unwrap();
        assert_eq!(thread.recipients(), 1);
        manager
            .send_to_user(&user("alice"), json!({"type": "end"}))
            .await
            .unwrap();
        manager
            .send_to_user(&user("bob"), json!({"type": "end"}))
            .await
            .unwrap();

        let alice_1_saw = read_until_end(&mut alice_1).await;
        let alice_2_saw = read_until_end(&mut alice_2).await;
        let bob_1_saw = read_until_end(&mut bob_1).await;
        let bob_2_saw = read_until_end(&mut bob_2).await;
        assert_eq!(
            alice_1_saw,
            vec![
                json!({"type": "note", "to": "alice"}),
                json!({"type": "thread", "t": "a1"})
            ]
        );
        assert_eq!(alice_2_saw, vec![json!({"type": "note", "to": "alice"})]);
        for saw in [&bob_1_saw, &bob_2_saw] {
            assert_eq!(saw.len(), 1, "{saw:?}");
            assert_eq!(saw[0]["type"], "agent_started");
            assert_eq!(saw[0]["critical"], true);
            assert_eq!(saw[0]["data"], json!({"run": 1}));
        }

        for client in [alice_1, alice_2, bob_1, bob_2] {
            close(client).await;
        }
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn reconnect_receives_missed_critical_events_in_order_before_newer_ones() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let manager = &server.manager;
        let alice = user("alice");
        let mut tab = connect(server.addr, "alice", Some("run-thread")).await;
        server.wait_connections("alice", 1).await;

        // The run starts while the tab is open...
        for event in &AGENT_EVENTS[..2] {
            let delivery = manager
                .emit_critical_event(&alice, event, json!({"run": "r1"}))
                .await
                .unwrap();
            assert_eq!(delivery.recipients(), 1);
        }
        assert_eq!(next_json(&mut tab).await["type"], AGENT_EVENTS[0]);
        assert_eq!(next_json(&mut tab).await["type"], AGENT_EVENTS[1]);

        // ...the tab drops mid-run; the server notices and unregisters it...
        close(tab).await;
        server.wait_connections("alice", 0).await;

        // ...the run goes on and its critical events wait for the user.
        for event in &AGENT_EVENTS[2..] {
            let delivery = manager
                .emit_critical_event(&alice, event, json!({"run": "r1"}))
                .await
                .unwrap();
            assert!(matches!(delivery, Delivery::Queued { .. }), "{delivery:?}");
        }
        assert_eq!(
            manager
                .get_connection_health(&alice)
                .pending_critical_events,
            3
        );

        // The tab comes back; something newer is sent right away.
        let mut tab = connect(server.addr, "alice", Some("run-thread")).await;
        server.wait_connections("alice", 1).await;
        manager
            .send_to_user(&alice, json!({"type": "final_answer", "text": "42"}))
            .await
            .unwrap();
        let mut sequences = Vec::new();
        for event in &AGENT_EVENTS[2..] {
            let replayed = next_json(&mut tab).await;
            assert_eq!(replayed["type"], *event);
            assert_eq!(replayed["data"], json!({"run": "r1"}));
            sequences.push(replayed["sequence"].as_u64().unwrap());
        }
        // The manager forgot the user while nothing was pending, so the
        // sequence may restart; what matters is consecutive, in order.
        assert!(
            sequences.windows(2).all(|w| w[1] == w[0] + 1),
            "replayed in emission order: {sequences:?}"
        );
        assert_eq!(next_json(&mut tab).await["type"], "final_answer");
        assert_eq!(
            manager
                .get_connection_health(&alice)
                .pending_critical_events,
            0
        );

        close(tab).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_while_others_keep_receiving() {
    bounded(async {
        let server = TestServer::start(ServerOptions {
            manager: ManagerConfig::builder()
                .queue_capacity(16)
                .queue_max_bytes(64 * 1024)
                .history_capacity(8)
                .history_max_bytes(32 * 1024)
                .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
                .build()
                .unwrap(),
            transport: TransportConfig::builder()
                // Long write timeout: what disconnects the reader is the
                // manager's slow-consumer policy, not the transport's timeout.
                .write_timeout(Duration::from_secs(20))
                .close_timeout(Duration::from_millis(300))
                .queue_limits(websocket_manager::socket::QueueLimits::new(16, 64 * 1024))
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let manager = &server.manager;
        let (mut slow, _) = try_connect(
            server.addr,
            Connect {
                recv_buffer: Some(4096),
                ..Connect::new("/ws", Some(token("slow", 600)))
            },
        )
        .await
        .unwrap();
        let mut fast = connect(server.addr, "fast", None).await;
        server.wait_connections("slow", 1).await;
        server.wait_connections("fast", 1).await;

        // The fast client reads everything, concurrently.
        let fast_reader = tokio::spawn(async move {
            let mut count = 0u64;
            loop {
                let value = next_json(&mut fast).await;
                if value["type"] == "end" {
                    return (count, fast);
                }
                assert_eq!(
                    value["n"], count,
                    "the fast client saw every message in order"
                );
                count += 1;
            }
        });

        let chunk = "x".repeat(4096);
        let slow_user = user("slow");
        let fast_user = user("fast");
        let mut sent_to_fast = 0u64;
        let mut disconnected_after = None;
        for n in 0..20_000u64 {
            if manager.get_user_connections(&slow_user).is_empty() {
                disconnected_after = Some(n);
                break;
            }
            // Failures are expected for the slow user once its queue is full.
            let _ = manager
                .send_to_user(&slow_user, json!({"type": "bulk", "n": n, "pad": chunk}))
                .await;
            manager
                .send_to_user(&fast_user, json!({"type": "tick", "n": sent_to_fast}))
                .await
                .unwrap();
            sent_to_fast += 1;
            // Paced, so that a client that reads keeps up: only the one that
            // stopped reading falls behind.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let disconnected_after =
            disconnected_after.expect("the slow client was never disconnected");
        assert!(manager.stats().slow_consumer_disconnects >= 1);

        // The fast client keeps receiving after the slow one is gone.
        for _ in 0..10 {
            manager
                .send_to_user(&fast_user, json!({"type": "tick", "n": sent_to_fast}))
                .await
                .unwrap();
            sent_to_fast += 1;
        }
        manager
            .send_to_user(&fast_user, json!({"type": "end"}))
            .await
            .unwrap();
        let (received, fast) = tokio::time::timeout(STEP, fast_reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, sent_to_fast);
        // Far more than the 16-frame queue went out before the disconnect:
        // the writer drained into the socket until the client's TCP window
        // and the socket buffers were full, then the queue filled up.
        assert!(disconnected_after > 64, "{disconnected_after}");

        // The slow client, reading again, finds its connection closed: the
        // 1008 close frame if it could still be written, else the end of
        // the stream (the server dropped a socket it could not write to).
        let seen = expect_close(&mut slow).await;
        eprintln!("slow client disconnected after {disconnected_after} sends; it saw {seen:?}");
        if let Some((code, _)) = seen {
            assert_eq!(code, 1008);
        }
        close(fast).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn missing_expired_forged_tokens_and_foreign_origins_are_refused_before_the_upgrade() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let status = |result: Result<_, tungstenite::Error>| match result {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(other) => panic!("expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("the upgrade was accepted"),
        };
        let cases = [
            ("missing token", Connect::new("/ws", None), 401),
            (
                "expired token",
                Connect::new("/ws", Some(token("alice", -60))),
                401,
            ),
            (
                "wrongly signed token",
                Connect::new(
                    "/ws",
                    Some(token_signed(
                        "alice",
                        600,
                        b"not the server's secret at all",
                    )),
                ),
                401,
            ),
            (
                "garbage token",
                Connect::new("/ws", Some("abc.def.ghi".to_owned())),
                401,
            ),
            (
                "foreign origin",
                Connect {
                    origin: Some("https://evil.example"),
                    ..Connect::new("/ws", Some(token("alice", 600)))
                },
                403,
            ),
            (
                "user_id query parameter without a token",
                Connect::new("/ws?user_id=alice", None),
                401,
            ),
        ];
        for (name, options, expected) in cases {
            assert_eq!(
                status(try_connect(server.addr, options).await),
                expected,
                "{name}"
            );
            assert!(
                server.manager.index_sizes().is_empty(),
                "{name} registered something"
            );
        }

        // The allowed origin passes; a `user_id` parameter is ignored: the
        // identity is the token's.
        let (client, _) = try_connect(
            server.addr,
            Connect {
                origin: Some(ALLOWED_ORIGIN),
                ..Connect::new("/ws?user_id=mallory", Some(token("alice", 600)))
            },
        )
        .await
        .unwrap();
        server.wait_connections("alice", 1).await;
        assert!(
            server
                .manager
                .get_user_connections(&user("mallory"))
                .is_empty()
        );
        close(client).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_token_in_the_subprotocol_header_is_accepted_and_the_app_protocol_echoed() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let (client, response) = try_connect(
            server.addr,
            Connect {
                protocols: Some(format!("websocket-manager, bearer.{}", token("carol", 600))),
                origin: Some(ALLOWED_ORIGIN),
                ..Connect::new("/ws", None)
            },
        )
        .await
        .unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "websocket-manager"
        );
        server.wait_connections("carol", 1).await;
        close(client).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn an_oversized_message_closes_that_socket_with_1009_and_nothing_else() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut offender = connect(server.addr, "alice", None).await;
        let mut other_tab = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 2).await;

        send_text(&mut offender, "x".repeat(64 * 1024 + 1)).await;
        let close_frame = expect_close(&mut offender).await;
        assert_eq!(close_frame.map(|(code, _)| code), Some(1009));
        server.wait_connections("alice", 1).await;

        // The other tab of the same user is untouched.
        server
            .manager
            .send_to_user(&user("alice"), json!({"type": "still_here"}))
            .await
            .unwrap();
        assert_eq!(next_json(&mut other_tab).await["type"], "still_here");
        // A message at the limit is fine.
        send_text(&mut other_tab, "y".repeat(64 * 1024)).await;
        server
            .manager
            .send_to_user(&user("alice"), json!({"type": "after"}))
            .await
            .unwrap();
        assert_eq!(next_json(&mut other_tab).await["type"], "after");
        // A message over the limit made of frames each under the frame
        // limit is refused too: the message limit counts the whole message.
        let mut fragmented = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 2).await;
        let half = "f".repeat(40 * 1024);
        for (opcode, last) in [(Data::Text, false), (Data::Continue, true)] {
            fragmented
                .send(Message::Frame(Frame::message(
                    half.clone().into_bytes(),
                    OpCode::Data(opcode),
                    last,
                )))
                .await
                .unwrap();
        }
        assert_eq!(
            expect_close(&mut fragmented).await.map(|(code, _)| code),
            Some(1009)
        );
        server.wait_connections("alice", 1).await;
        close(other_tab).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn heartbeat_pings_live_clients_and_removes_silent_ones() {
    bounded(async {
        let server = TestServer::start(ServerOptions {
            transport: TransportConfig::builder()
                .ping_interval(Duration::from_millis(100))
                // Generous against a loaded CI machine: a live client must
                // never look silent for 800 ms.
                .idle_timeout(Duration::from_millis(800))
                .close_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        // The silent client never reads, so it never answers a ping. It goes
        // through the tungstenite adapter, whose `accept` returns how the
        // connection ended.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = listener.local_addr().unwrap();
        let service = server.service.clone();
        let silent_outcome = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            websocket_manager::transport::tungstenite::accept(&service, stream).await
        });
        let silent = connect(silent_addr, "silent", None).await;
        let mut live = connect(server.addr, "live", None).await;
        server.wait_connections("silent", 1).await;
        server.wait_connections("live", 1).await;

        // The live client reads (and so answers pings) for 2x the idle timeout.
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(1600);
        while let Ok(message) = tokio::time::timeout_at(until, live.next()).await {
            match message {
                Some(Ok(Message::Ping(_))) => pings += 1,
                // The application heartbeat rides on the same timer.
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"heartbeat""#) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            pings >= 5,
            "expected a ping about every 100 ms, saw {pings} in 1.2 s"
        );
        server.wait_connections("live", 1).await;
        // The silent one was removed, for its silence. (Its close frame,
        // 4408, is in its receive buffer, but a tungstenite client reading
        // it late first tries to answer the queued pings and fails on the
        // closed socket.)
        server.wait_connections("silent", 0).await;
        let outcome = tokio::time::timeout(STEP, silent_outcome)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(outcome.end, EndReason::HeartbeatTimeout, "{outcome}");
        drop(silent);
        close(live).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_closes_everyone_with_1001_and_refuses_newcomers() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut clients = vec![
            connect(server.addr, "alice", None).await,
            connect(server.addr, "alice", Some("t")).await,
            connect(server.addr, "bob", None).await,
        ];
        server.wait_connections("alice", 2).await;
        server.wait_connections("bob", 1).await;

        let service = server.service.clone();
        let shutdown = tokio::spawn(async move { service.shutdown(Duration::from_secs(3)).await });
        for client in &mut clients {
            let frame = expect_close(client).await;
            assert_eq!(frame.map(|(code, _)| code), Some(1001));
        }
        let report = shutdown.await.unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.connections_at_start, 3);
        assert_eq!(report.closed_within_drain, 3);
        server.assert_indexes_empty().await;

        let refused =
            try_connect(server.addr, Connect::new("/ws", Some(token("carol", 600)))).await;
        assert!(
            matches!(&refused, Err(tungstenite::Error::Http(r)) if r.status() == 503),
            "{refused:?}"
        );
        assert!(server.manager.index_sizes().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_refused_registration_closes_the_socket_with_1008_and_its_reason() {
    bounded(async {
        let server = TestServer::start(ServerOptions {
            manager: ManagerConfig::builder()
                .max_connections_per_user(2)
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let first = connect(server.addr, "alice", None).await;
        let second = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 2).await;
        // Refused after the upgrade: a close frame, and no hello before it.
        let (mut third, _) =
            try_connect(server.addr, Connect::new("/ws", Some(token("alice", 600))))
                .await
                .unwrap();
        let frame = match next_frame(&mut third).await {
            Seen::Close(frame) => frame.unwrap(),
            other => panic!("expected the close frame first, got {other:?}"),
        };
        assert_eq!(frame.0, 1008);
        assert!(frame.1.contains("per-user connection limit"), "{frame:?}");
        assert_eq!(server.manager.get_user_connections(&user("alice")).len(), 2);
        close(first).await;
        close(second).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_removed_by_the_manager_gets_a_close_frame() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut client = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 1).await;
        let id = server
            .manager
            .get_user_connections(&user("alice"))
            .into_iter()
            .next()
            .unwrap();
        assert!(server.manager.remove_connection(&id).await.is_some());
        let frame = expect_close(&mut client).await;
        assert_eq!(frame.map(|(code, _)| code), Some(1000));
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn inbound_messages_reach_the_handler_and_handler_failures_kill_nothing() {
    bounded(async {
        let handler = handler_fn(
            |context: InboundContext, message: InboundMessage| async move {
                let text = message.as_text().unwrap_or_default().to_owned();
                match text.as_str() {
                    "fail" => {
                        return Err::<(), HandlerError>("the handler failed on purpose".into());
                    }
                    "panic" => panic!("the handler panicked on purpose"),
                    _ => {}
                }
                context
                    .manager()
                    .send_to_user(
                        context.user_id(),
                        json!({
                            "type": "echo",
                            "text": text,
                            "thread": context.thread_id().as_ref().map(ThreadId::as_str),
                        }),
                    )
                    .await?;
                Ok(())
            },
        );
        let server = TestServer::start(ServerOptions {
            handler: Arc::new(handler),
            ..ServerOptions::default()
        })
        .await;
        let mut client = connect(server.addr, "alice", Some("t-9")).await;
        server.wait_connections("alice", 1).await;
        for text in ["fail", "panic", "hello"] {
            send_text(&mut client, text.to_owned()).await;
        }
        assert_eq!(
            next_json(&mut client).await,
            json!({"type": "echo", "text": "hello", "thread": "t-9"})
        );
        assert_eq!(server.manager.get_user_connections(&user("alice")).len(), 1);
        close(client).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn serve_reports_how_each_connection_ended() {
    // `serve` returns the outcome: here a client close, seen through a
    // service driven by hand over the tungstenite adapter.
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = server.service.clone();
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            websocket_manager::transport::tungstenite::accept(&service, stream).await
        });
        let client = connect(addr, "dave", None).await;
        server.wait_connections("dave", 1).await;
        close(client).await;
        let outcome = tokio::time::timeout(STEP, accepted)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(outcome.user_id.as_str(), "dave");
        assert!(
            matches!(outcome.end, EndReason::ClientClosed { code: Some(1000) }),
            "{outcome}"
        );
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn under_the_drop_policy_a_stalled_socket_is_dropped_by_the_write_timeout() {
    // The manager never disconnects anyone under `DropMessage`: the
    // transport's write timeout is what frees a socket nobody reads.
    bounded(async {
        let (server, stalled) = drop_policy_server_with_stalled_client(
            Duration::from_millis(300),
            Duration::from_millis(200),
        )
        .await;
        server.wait_connections("stalled", 1).await;
        let stalled_user = user("stalled");
        let chunk = "x".repeat(4096);
        let mut removed = false;
        for n in 0..20_000u64 {
            if server
                .manager
                .get_user_connections(&stalled_user)
                .is_empty()
            {
                removed = true;
                break;
            }
            let _ = server
                .manager
                .send_to_user(&stalled_user, json!({"type": "bulk", "n": n, "pad": chunk}))
                .await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(removed, "the stalled socket was never dropped");
        let stats = server.manager.stats();
        assert_eq!(stats.slow_consumer_disconnects, 0, "{stats}");
        assert!(stats.messages_dropped > 0, "{stats}");
        drop(stalled);
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn the_tungstenite_adapter_refuses_before_the_upgrade_and_serves_after_it() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = server.service.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service.clone();
                tokio::spawn(async move {
                    let _ =
                        websocket_manager::transport::tungstenite::accept(&service, stream).await;
                });
            }
        });
        let status = |result: Result<_, tungstenite::Error>| match result {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
        };
        assert_eq!(
            status(try_connect(addr, Connect::new("/ws", None)).await),
            401
        );
        assert_eq!(
            status(try_connect(addr, Connect::new("/ws", Some(token("erin", -5)))).await),
            401
        );
        assert_eq!(
            status(
                try_connect(
                    addr,
                    Connect {
                        origin: Some("https://evil.example"),
                        ..Connect::new("/ws", Some(token("erin", 600)))
                    }
                )
                .await
            ),
            403
        );
        assert!(server.manager.index_sizes().is_empty());

        let (mut client, response) = try_connect(
            addr,
            Connect {
                protocols: Some(format!("websocket-manager, bearer.{}", token("erin", 600))),
                ..Connect::new("/ws?thread=t-e", None)
            },
        )
        .await
        .unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "websocket-manager"
        );
        server.wait_connections("erin", 1).await;
        server
            .manager
            .send_to_thread(&ThreadId::new("t-e").unwrap(), json!({"type": "hi"}))
            .await
            .unwrap();
        assert_eq!(next_json(&mut client).await["type"], "hi");
        // The size limit holds on this adapter too.
        send_text(&mut client, "z".repeat(64 * 1024 + 1)).await;
        assert_eq!(
            expect_close(&mut client).await.map(|(code, _)| code),
            Some(1009)
        );
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_reports_connections_that_did_not_close_within_the_drain_time() {
    bounded(async {
        // A client that stopped reading with full buffers cannot take its
        // close frame; the close handshake is allowed 2 s but the drain only
        // 100 ms, so shutdown reports it as left and removes it anyway.
        let (server, stalled) =
            drop_policy_server_with_stalled_client(Duration::from_secs(20), Duration::from_secs(2))
                .await;
        let mut polite = connect(server.addr, "polite", None).await;
        server.wait_connections("stalled", 1).await;
        server.wait_connections("polite", 1).await;
        // Fill every buffer between the server and the stalled client: sends
        // start being dropped once its queue is full behind a stuck write.
        let stalled_user = user("stalled");
        let chunk = "x".repeat(4096);
        let mut stuck = false;
        for n in 0..20_000u64 {
            let _ = server
                .manager
                .send_to_user(&stalled_user, json!({"type": "bulk", "n": n, "pad": chunk}))
                .await;
            if server.manager.stats().messages_dropped > 0 {
                stuck = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(stuck, "the stalled client's writer never got stuck");

        let service = server.service.clone();
        let shutdown =
            tokio::spawn(async move { service.shutdown(Duration::from_millis(100)).await });
        assert_eq!(
            expect_close(&mut polite).await.map(|(code, _)| code),
            Some(1001)
        );
        let report = shutdown.await.unwrap();
        assert_eq!(report.connections_at_start, 2, "{report}");
        assert_eq!(report.left.len(), 1, "{report}");
        assert_eq!(report.left[0].user_id.as_str(), "stalled");
        assert_eq!(report.closed_within_drain, 1);
        assert!(!report.is_clean());
        assert!(report.to_string().contains("left: "), "{report}");
        // Removed from the manager even though its driver was still busy.
        server.assert_indexes_empty().await;
        drop(stalled);
    })
    .await;
}

#[tokio::test]
async fn an_aborted_connection_task_still_leaves_the_manager_clean() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = server.service.clone();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            websocket_manager::transport::tungstenite::accept(&service, stream).await
        });
        let mut client = connect(addr, "frank", None).await;
        server.wait_connections("frank", 1).await;
        task.abort();
        server.assert_indexes_empty().await;
        assert_eq!(server.service.live_connections(), 0);
        // The client sees its connection end.
        assert!(matches!(
            next_seen(&mut client).await,
            Seen::Close(_) | Seen::Gone
        ));
    })
    .await;
}
