//! The cluster node the failover tests (Sentinel, Redis Cluster) run: short
//! timeouts so the failover shows, a node TTL longer than the failover so
//! the nodes stay up (not fenced) while Redis moves, and the durability
//! setting on or off.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager, ManagerConfig};

pub async fn node(url: &str, prefix: &str, name: &str, durable: bool) -> ClusterWebSocketManager {
    let cluster = ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(name)
        .command_timeout(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_millis(200))
        .node_ttl(Duration::from_secs(20))
        .wait_for_replicas(usize::from(durable))
        .build()
        .unwrap();
    let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster).unwrap();
    tokio::time::timeout(Duration::from_secs(10), manager.ready())
        .await
        .expect("ready within 10 s")
        .unwrap();
    manager
}
