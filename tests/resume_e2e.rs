//! End to end over real loopback sockets: a client that loses its connection
//! with unread data resumes from its last offset (`/ws?resume=<stream>:<seq>`)
//! and gets every later critical event exactly once; offsets the server
//! cannot honour are announced; a malformed `resume` is a 400 that says why,
//! on both adapters.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite;
use websocket_manager::events::{
    AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, TOOL_COMPLETED, TOOL_EXECUTING,
};
use websocket_manager::events::{EventPrint, StreamOffset};
use websocket_manager::{UserId, WebSocketManager};
use websocket_manager_test_support::e2e::*;

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

fn offset_of(event: &serde_json::Value) -> StreamOffset {
    StreamOffset::new(
        event["stream"].as_u64().unwrap(),
        event["sequence"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_client_reset_with_unread_data_resumes_and_gets_every_later_event_once() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let manager = server.manager.clone();
        let (mut tab, _) = try_connect(
            server.addr,
            Connect {
                recv_buffer: Some(4096),
                ..Connect::new("/ws", Some(token("alice", 600)))
            },
        )
        .await
        .unwrap();
        server.wait_connections("alice", 1).await;

        let payload = "x".repeat(2000); // a few events fill the tiny buffers
        for event in [AGENT_STARTED, AGENT_THINKING] {
            manager
                .emit_critical_event(&alice(), event, json!({"run": "r1"}))
                .await
                .unwrap();
        }
        let _started = next_json(&mut tab).await;
        let last_seen = offset_of(&next_json(&mut tab).await);

        // The network goes away: the client reads nothing more while the
        // run goes on. These are "delivered" into queues and kernel buffers.
        for event in [TOOL_EXECUTING, TOOL_COMPLETED, AGENT_COMPLETED] {
            let delivery = manager
                .emit_critical_event(&alice(), event, json!({"run": "r1", "pad": payload}))
                .await
                .unwrap();
            assert!(delivery.offset().is_some());
        }
        let final_answer = manager
            .emit_critical_event(&alice(), "final_answer", json!({"run": "r1", "text": "42"}))
            .await
            .unwrap()
            .offset()
            .unwrap();
        // Then the connection is reset with unread data (RST, no close).
        tokio::time::sleep(Duration::from_millis(50)).await;
        tab.get_ref().set_zero_linger().unwrap();
        drop(tab);
        server.wait_connections("alice", 0).await;

        let path = format!("/ws?resume={last_seen}");
        let (mut tab, _) = try_connect(server.addr, Connect::new(&path, Some(token("alice", 600))))
            .await
            .unwrap();
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(next_json(&mut tab).await);
        }
        let types: Vec<_> = received.iter().map(|e| e["type"].clone()).collect();
        assert_eq!(
            types,
            [
                TOOL_EXECUTING,
                TOOL_COMPLETED,
                AGENT_COMPLETED,
                "final_answer"
            ],
            "every event after the offset, in order, no notice"
        );
        assert_eq!(offset_of(&received[3]), final_answer);
        assert_eq!(received[3]["data"]["text"], "42");
        // Exactly once: the next frame is the next event, not a repeat.
        manager
            .emit_critical_event(&alice(), AGENT_STARTED, json!({"run": "r2"}))
            .await
            .unwrap();
        let next = next_json(&mut tab).await;
        assert_eq!(next["data"]["run"], "r2");
        assert_eq!(offset_of(&next).sequence, final_answer.sequence + 1);
        close(tab).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_resume_from_an_unknown_stream_gets_the_resync_notice_first() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        server
            .manager
            .emit_critical_event(&alice(), AGENT_STARTED, json!({"run": "r1"}))
            .await
            .unwrap();
        // e.g. an offset from before a server restart
        let (mut tab, _) = try_connect(
            server.addr,
            Connect::new("/ws?resume=12:5", Some(token("alice", 600))),
        )
        .await
        .unwrap();
        let notice = next_json(&mut tab).await;
        assert_eq!(notice["type"], "resync");
        assert_eq!(notice["reason"], "unknown_stream");
        assert_eq!(notice["requested"], json!({"stream": 12, "sequence": 5}));
        assert_eq!(notice["lost"], serde_json::Value::Null);
        let retained = next_json(&mut tab).await;
        assert_eq!(retained["type"], AGENT_STARTED);
        assert_eq!(offset_of(&retained), offset_of(&notice["oldest_retained"]));
        close(tab).await;
    })
    .await;
}

/// A `resume` may carry the print of the client's last event
/// (`<stream>:<sequence>:<print>`: FNV-1a over the frame's bytes): the same
/// event there resumes as usual; another one means the offset does not name
/// what the client saw, and it is told (`unknown_stream`) before the
/// retained events.
#[tokio::test]
async fn a_resume_with_a_print_is_checked_against_the_event_at_its_offset() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut tab = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 1).await;
        for run in ["r1", "r2"] {
            server
                .manager
                .emit_critical_event(&alice(), AGENT_STARTED, json!({"run": run}))
                .await
                .unwrap();
        }
        let first = next_text(&mut tab).await;
        let second = next_text(&mut tab).await;
        let at = offset_of(&serde_json::from_str(&second).unwrap());
        close(tab).await;
        server.wait_connections("alice", 0).await;

        // The event the client saw: no notice, what follows it.
        let path = format!("/ws?resume={at}:{}", EventPrint::of(&second));
        let (mut tab, _) = try_connect(server.addr, Connect::new(&path, Some(token("alice", 600))))
            .await
            .unwrap();
        server.wait_connections("alice", 1).await;
        server
            .manager
            .emit_critical_event(&alice(), AGENT_COMPLETED, json!({"run": "r2"}))
            .await
            .unwrap();
        let next = next_json(&mut tab).await;
        assert_eq!(next["type"], AGENT_COMPLETED, "no notice, no repeat");
        close(tab).await;
        server.wait_connections("alice", 0).await;

        // Another event's print at that offset.
        let path = format!("/ws?resume={at}:{}", EventPrint::of(&first));
        let (mut tab, _) = try_connect(server.addr, Connect::new(&path, Some(token("alice", 600))))
            .await
            .unwrap();
        let notice = next_json(&mut tab).await;
        assert_eq!(notice["type"], "resync");
        assert_eq!(notice["reason"], "unknown_stream");
        assert_eq!(
            notice["requested"],
            json!({"stream": at.stream, "sequence": at.sequence})
        );
        let retained = next_json(&mut tab).await;
        assert_eq!(retained["data"]["run"], "r1", "then every retained event");
        close(tab).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_malformed_resume_is_a_400_that_says_why_on_both_adapters() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let tungstenite_addr = tungstenite_server(server.service.clone()).await;
        for addr in [server.addr, tungstenite_addr] {
            for (query, expected) in [
                ("resume=12", "no `:`"),
                ("resume=12:x", "the sequence is not a decimal number"),
                ("resume=%2B1:2", "the stream is not a decimal number"),
                ("resume=%zz", "not valid percent-encoded UTF-8"),
                ("resume=12:5:xyz", "the print is not 8 hexadecimal digits"),
                ("resume=12:5:", "the print is not 8 hexadecimal digits"),
            ] {
                let path = format!("/ws?{query}");
                match try_connect(addr, Connect::new(&path, Some(token("alice", 600)))).await {
                    Err(tungstenite::Error::Http(response)) => {
                        assert_eq!(response.status().as_u16(), 400, "{query}");
                        let body =
                            String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
                        assert!(
                            body.contains("resume") && body.contains(expected),
                            "{addr} {query}: {body}"
                        );
                    }
                    other => panic!("{query} was not refused: {:?}", other.map(|_| ())),
                }
            }
            // and a valid one is accepted
            let (mut tab, _) = try_connect(
                addr,
                Connect::new("/ws?resume=1:0", Some(token("alice", 600))),
            )
            .await
            .unwrap();
            assert_eq!(next_json(&mut tab).await["type"], "resync");
            close(tab).await;
        }
        // nothing was registered by the refused upgrades
        server.wait_connections("alice", 0).await;
        assert_eq!(server.manager.index_sizes().connections, 0);
        let _ = server.service.shutdown(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test]
async fn a_tab_with_an_offset_and_a_tab_without_see_the_same_stream() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        let mut first = connect(server.addr, "alice", None).await;
        server.wait_connections("alice", 1).await;
        server
            .manager
            .emit_critical_event(&alice(), AGENT_STARTED, json!({}))
            .await
            .unwrap();
        let seen = offset_of(&next_json(&mut first).await);
        let (mut second, _) = try_connect(
            server.addr,
            Connect::new(&format!("/ws?resume={seen}"), Some(token("alice", 600))),
        )
        .await
        .unwrap();
        server.wait_connections("alice", 2).await;
        server
            .manager
            .emit_critical_event(&alice(), AGENT_COMPLETED, json!({}))
            .await
            .unwrap();
        let a = offset_of(&next_json(&mut first).await);
        let b = offset_of(&next_json(&mut second).await);
        assert_eq!(a, b);
        assert_eq!(a, StreamOffset::new(seen.stream, seen.sequence + 1));
        // the client side of a reset: the stream ends without a close frame
        drop(second);
        close(first).await;
        server.assert_indexes_empty().await;
    })
    .await;
}
