//! The cluster node the failover tests (Sentinel, Redis Cluster) run: short
//! timeouts so the failover shows, a node TTL longer than the failover so
//! the nodes stay up (not fenced) while Redis moves, and the durability
//! setting on or off.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use websocket_manager::managers::{
    ClusterConfig, ClusterConfigBuilder, ClusterWebSocketManager, ManagerConfig,
};

/// Sends the library's logs (debug and up) to the test's captured output,
/// which the harness prints when the test fails: a failover that went wrong
/// in CI comes with each node's account of it.
pub fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "websocket_manager=debug",
        ))
        .with_test_writer()
        .try_init();
}

pub async fn node(url: &str, prefix: &str, name: &str, durable: bool) -> ClusterWebSocketManager {
    start(
        failover_config(url, prefix, name)
            .wait_for_replicas(usize::from(durable))
            .build()
            .unwrap(),
    )
    .await
}

/// The same node with its link watchdog on a short leash: probed every
/// `probe`, each probe answered within `probe`.
pub async fn watched_node(
    url: &str,
    prefix: &str,
    name: &str,
    probe: Duration,
) -> ClusterWebSocketManager {
    start(
        failover_config(url, prefix, name)
            .probe_interval(probe)
            .probe_timeout(probe)
            .build()
            .unwrap(),
    )
    .await
}

fn failover_config(url: &str, prefix: &str, name: &str) -> ClusterConfigBuilder {
    ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(name)
        .command_timeout(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_millis(200))
        .node_ttl(Duration::from_secs(20))
}

async fn start(cluster: ClusterConfig) -> ClusterWebSocketManager {
    let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster).unwrap();
    tokio::time::timeout(Duration::from_secs(10), manager.ready())
        .await
        .expect("ready within 10 s")
        .unwrap();
    manager
}
