//! Resumes of one user that wait for a history read at the same time share
//! one read (issue 19: a reconnect storm brings every tab of a user back
//! at once), against a real `redis-server`, frozen with SIGSTOP so that the
//! registrations queue behind one read in flight: each tab still gets
//! exactly the events after its own offset, and a tab whose offset is
//! beyond the head (Redis lost events) still has its stream retired, which
//! only a read from its own offset does.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use websocket_manager::events::StreamOffset;
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
use websocket_manager::{UserId, WebSocketManager};
use websocket_manager_test_support::redis::{own_redis_for, unique_prefix};
use websocket_manager_test_support::tab::ResumingTab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_of_one_user_waiting_together_share_one_history_read() {
    let Some(redis) = own_redis_for("cluster_shared_reads") else {
        return;
    };
    let cluster = ClusterConfig::builder(redis.url())
        .key_prefix(unique_prefix("cluster_shared_reads"))
        .node_id("reads")
        // One read at a time: the others wait for their turn together.
        .history_reads(1)
        .command_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let manager = Arc::new(ClusterWebSocketManager::new(Default::default(), cluster).unwrap());
    manager.ready().await.unwrap();
    let alice = UserId::new("alice").unwrap();
    let mut stream = 0;
    for n in 1..=5 {
        let delivery = manager
            .emit_critical_event(&alice, "agent_thinking", json!({ "n": n }))
            .await
            .unwrap();
        stream = delivery.offset().unwrap().stream;
    }

    // Redis frozen: bob's registration takes the only turn and its read
    // hangs; alice's tabs then wait for the turn together.
    redis.pause();
    let connect = |user: &'static str, resume: Option<u64>| {
        let manager = Arc::clone(&manager);
        let mut tab = ResumingTab::new(UserId::new(user).unwrap());
        tab.last = resume.map(|sequence| StreamOffset::new(stream, sequence));
        tokio::spawn(async move {
            let limits = manager.config().queue_limits();
            assert!(tab.connect(&*manager, limits).await, "{user} refused");
            tab
        })
    };
    let bob = connect("bob", None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resumes = [1, 3, 2, 4, 1, 9];
    let mut tabs = Vec::new();
    for resume in resumes {
        tabs.push(connect("alice", Some(resume)));
        // In this order: the first one leads the read, the others join it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.unpause();

    bob.await.unwrap();
    let mut finished = Vec::new();
    for tab in tabs {
        finished.push(tab.await.unwrap());
    }
    let stats = manager.cluster_stats();
    // Five of the six joined the first one's read; the one beyond the head
    // then read alone.
    assert_eq!(stats.history_reads_shared, 5, "{stats}");
    for (resume, mut tab) in resumes.into_iter().zip(finished) {
        tab.read(Duration::from_millis(300)).await;
        if resume > 5 {
            assert_eq!(
                tab.notices,
                ["unknown_stream"],
                "resumed beyond the head: the stream is retired and the tab told"
            );
            continue;
        }
        let sequences: Vec<u64> = tab.seen.iter().map(|(offset, _)| offset.sequence).collect();
        assert_eq!(
            sequences,
            (resume + 1..=5).collect::<Vec<_>>(),
            "a tab resuming from {resume} gets what follows its own offset, once"
        );
        assert!(tab.notices.is_empty(), "{:?}", tab.notices);
    }
    let next = manager
        .emit_critical_event(&alice, "agent_thinking", json!({ "n": 6 }))
        .await
        .unwrap();
    assert_ne!(
        next.offset().unwrap().stream,
        stream,
        "the stream was retired: no offset of it can name a new event"
    );
}
