//! Publishes a manager's [`ManagerStats`] through the [`metrics`] facade
//! crate (feature `metrics`), so any `metrics` exporter (Prometheus, StatsD,
//! OpenTelemetry...) sees connection, send, drop, slow-consumer and pending
//! counters and gauges.
//!
//! This is an exporter of snapshots, not instrumentation: the manager keeps
//! its own atomic counters (read by
//! [`UnifiedWebSocketManager::stats`](crate::managers::UnifiedWebSocketManager::stats)),
//! and [`publish`] copies one snapshot into the installed recorder, counters
//! with [`Counter::absolute`](metrics::Counter::absolute) and gauges with
//! [`Gauge::set`](metrics::Gauge::set). Call it from the scrape handler
//! (fresh values at every scrape) or from a timer with [`spawn_publisher`].
//! Nothing is recorded on the send path, so enabling the feature costs the
//! hot path nothing.
//!
//! Every series is listed once, in [`series`]: one line per
//! [`ManagerStats`] field.
//!
//! ```
//! use websocket_manager::managers::UnifiedWebSocketManager;
//! use websocket_manager::metrics::{self, Label};
//!
//! let manager = UnifiedWebSocketManager::default();
//! metrics::describe();
//! // With no recorder installed this is a no-op; with one, every series is set.
//! metrics::publish(&manager.stats(), &[Label::new("manager", "unified")]);
//! ```

use std::time::Duration;

use crate::managers::ManagerStats;

pub use ::metrics::Label;

/// Whether a series only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// Monotonic since the manager was built; published with `absolute`.
    Counter,
    /// A current size; published with `set`.
    Gauge,
}

/// One value of a [`ManagerStats`] snapshot, with its metric name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Series {
    /// The metric name, Prometheus style (`_total` for counters).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: SeriesKind,
    /// The description given to the recorder by [`describe`].
    pub help: &'static str,
    /// The value in the snapshot.
    pub value: u64,
    /// The `reason` label of a series published once per reason (several
    /// series then share a name), `None` for the others.
    pub reason: Option<&'static str>,
}

const fn counter(name: &'static str, help: &'static str, value: u64) -> Series {
    Series {
        name,
        kind: SeriesKind::Counter,
        help,
        value,
        reason: None,
    }
}

#[cfg(feature = "transport")]
const fn labelled(series: Series, reason: &'static str) -> Series {
    Series {
        reason: Some(reason),
        ..series
    }
}

const fn gauge(name: &'static str, help: &'static str, value: usize) -> Series {
    Series {
        name,
        kind: SeriesKind::Gauge,
        help,
        value: value as u64,
        reason: None,
    }
}

/// Every published series of one snapshot: one line per [`ManagerStats`]
/// field (a new field is published by adding its line here).
///
/// ```
/// use websocket_manager::managers::ManagerStats;
/// use websocket_manager::metrics::series;
/// let names: Vec<_> = series(&ManagerStats::default()).iter().map(|s| s.name).collect();
/// assert!(names.contains(&"websocket_manager_messages_sent_total"));
/// assert!(names.contains(&"websocket_manager_connections"));
/// ```
// One line per field: keep it a table.
#[rustfmt::skip]
pub fn series(stats: &ManagerStats) -> Vec<Series> {
    let (s, i) = (stats, &stats.indexes);
    vec![
        gauge("websocket_manager_connections", "Connections registered.", i.connections),
        gauge("websocket_manager_users", "Users with a connection, pending events or counters.", i.users),
        gauge("websocket_manager_sockets", "Entries of the socket -> connection index.", i.sockets),
        gauge("websocket_manager_threads", "Threads with at least one connection.", i.threads),
        gauge("websocket_manager_history_users", "Users holding retained critical events (or a loss not yet announced).", i.history_users),
        counter("websocket_manager_messages_sent_total", "Frames accepted into connection queues (one per recipient).", s.messages_sent),
        counter("websocket_manager_messages_failed_total", "Sends and critical events that reached no connection and were not buffered.", s.messages_failed),
        counter("websocket_manager_messages_dropped_total", "Frames dropped for one connection (queue full under the drop policy, or too large).", s.messages_dropped),
        counter("websocket_manager_slow_consumer_disconnects_total", "Connections closed because their queue was full.", s.slow_consumer_disconnects),
        counter("websocket_manager_critical_rejected_total", "Critical events refused (history full of pending events, too large, or too many users with history).", s.critical_rejected),
        counter("websocket_manager_history_evicted_total", "Retained critical events evicted to make room (each had been taken by a connection).", s.history_evicted),
        counter("websocket_manager_history_expired_total", "Retained critical events dropped for age.", s.history_expired),
        counter("websocket_manager_pending_expired_total", "Critical events no connection took, dropped for age (announced to the next connection).", s.pending_expired),
        counter("websocket_manager_replayed_total", "Critical events replayed into new connections.", s.replayed),
        counter("websocket_manager_resync_notices_total", "Resync notices sent: a connection was told it missed events.", s.resync_notices),
        counter("websocket_manager_pending_discarded_at_shutdown_total", "Critical events no connection took, dropped by shutdown.", s.pending_discarded_at_shutdown),
    ]
}

/// Every published series of a cluster node's
/// [`ClusterStats`](crate::managers::ClusterStats) (feature `redis`): its link to
/// Redis (reconnects, probe timeouts, fences), audits and inbound drops.
/// Publish them with [`publish_cluster`] next to the node's
/// [`ManagerStats`].
///
/// ```no_run
/// use websocket_manager::metrics::{cluster_series, publish, publish_cluster, Label};
/// use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager, ManagerConfig};
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let node = ClusterWebSocketManager::new(
///     ManagerConfig::default(),
///     ClusterConfig::builder("redis://127.0.0.1:6379").build()?,
/// )?;
/// let labels = [Label::new("node", node.node_id().to_owned())];
/// publish(&node.stats(), &labels);
/// publish_cluster(&node.cluster_stats(), &labels);
/// let names: Vec<_> = cluster_series(&node.cluster_stats()).iter().map(|s| s.name).collect();
/// assert!(names.contains(&"websocket_manager_cluster_probe_timeouts_total"));
/// # Ok(()) }
/// ```
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[rustfmt::skip]
pub fn cluster_series(stats: &crate::managers::ClusterStats) -> Vec<Series> {
    let s = stats;
    vec![
        gauge("websocket_manager_cluster_ready", "1 while the node is subscribed and registered with Redis, else 0.", usize::from(s.ready)),
        gauge("websocket_manager_cluster_fenced", "1 while the node is fenced (cut off from Redis past fence_after: connections closed, new ones refused), else 0.", usize::from(matches!(s.link, crate::managers::LinkState::Fenced { .. }))),
        gauge("websocket_manager_cluster_remote_connections", "Other nodes' connections in this node's replica.", s.remote_connections),
        gauge("websocket_manager_cluster_remote_nodes", "Other nodes in this node's replica.", s.remote_nodes),
        counter("websocket_manager_cluster_inbound_dropped_total", "Messages from Redis dropped on a full inbound buffer (each one triggered an audit).", s.inbound_dropped),
        counter("websocket_manager_cluster_audits_total", "Audits of every local user after a possible message loss.", s.audits),
        counter("websocket_manager_cluster_reconnects_total", "Fresh connections to Redis made after the link went silent.", s.reconnects),
        counter("websocket_manager_cluster_probe_timeouts_total", "Probes of the link to Redis unanswered within probe_timeout.", s.probe_timeouts),
        counter("websocket_manager_cluster_fenced_total", "Times the node fenced itself (cut off from Redis past fence_after).", s.fenced),
        counter("websocket_manager_cluster_history_read_waits_total", "Registrations that waited for a history read's turn (history_reads in flight: a reconnect storm).", s.history_read_waits),
        counter("websocket_manager_cluster_history_reads_shared_total", "Registrations that used a history read sent for another registration of the same user (a reconnect storm's resumes, merged).", s.history_reads_shared),
        counter("websocket_manager_cluster_resent_appends_total", "Critical events the Redis client re-sent after a Redis Cluster master had stored them (a connection dropped before the answer), stored and published once.", s.resent_appends),
    ]
}

/// Copies one cluster snapshot into the installed recorder, as
/// [`publish`] does for [`ManagerStats`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub fn publish_cluster(stats: &crate::managers::ClusterStats, labels: &[Label]) {
    record(cluster_series(stats), labels);
}

/// Every published series of a service's
/// [`TransportStats`](crate::transport::TransportStats) (feature
/// `transport`): its connections and what its admission control refused or
/// limited. Publish them with [`publish_transport`].
///
/// ```
/// use websocket_manager::metrics::transport_series;
/// use websocket_manager::transport::TransportStats;
/// let names: Vec<_> = transport_series(&TransportStats::default()).iter().map(|s| s.name).collect();
/// assert!(names.contains(&"websocket_manager_upgrades_refused_total"));
/// ```
#[cfg(feature = "transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "transport")))]
#[rustfmt::skip]
pub fn transport_series(stats: &crate::transport::TransportStats) -> Vec<Series> {
    let s = stats;
    vec![
        gauge("websocket_manager_transport_connections", "Connections the transport drives.", s.connections),
        counter("websocket_manager_upgrades_admitted_total", "Upgrades admitted (authenticated).", s.upgrades_admitted),
        labelled(counter("websocket_manager_upgrades_refused_total", "Upgrades refused with 503 and Retry-After, by reason.", s.upgrades_refused_at_capacity), "at_capacity"),
        labelled(counter("websocket_manager_upgrades_refused_total", "Upgrades refused with 503 and Retry-After, by reason.", s.upgrades_refused_rate_limited), "rate_limited"),
        labelled(counter("websocket_manager_upgrades_refused_total", "Upgrades refused with 503 and Retry-After, by reason.", s.upgrades_refused_not_ready), "not_ready"),
        counter("websocket_manager_messages_rate_limited_total", "Inbound messages over a connection's rate, answered with a rate_limited error frame.", s.messages_rate_limited),
        counter("websocket_manager_message_rate_closes_total", "Connections closed with 1008 for their message rate.", s.closed_for_message_rate),
    ]
}

/// [`publish`] for a service's
/// [`TransportStats`](crate::transport::TransportStats).
#[cfg(feature = "transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "transport")))]
pub fn publish_transport(stats: &crate::transport::TransportStats, labels: &[Label]) {
    record(transport_series(stats), labels);
}

/// Gives every series its description in the installed recorder (once, at
/// startup, after installing the recorder; exporters show it as `# HELP`).
pub fn describe() {
    let all = series(&ManagerStats::default());
    #[cfg(feature = "transport")]
    let all = {
        let mut all = all;
        all.extend(transport_series(
            &crate::transport::TransportStats::default(),
        ));
        all
    };
    #[cfg(feature = "redis")]
    let all = {
        let mut all = all;
        all.extend(cluster_series(&crate::managers::ClusterStats::zero()));
        all
    };
    for series in all {
        match series.kind {
            SeriesKind::Counter => ::metrics::describe_counter!(series.name, series.help),
            SeriesKind::Gauge => ::metrics::describe_gauge!(series.name, series.help),
        }
    }
}

/// Copies one snapshot into the installed recorder, every series with
/// `labels` (for instance `manager="unified"`, to tell several managers of
/// one process apart).
///
/// Counters are published with `absolute`: recorders keep the largest value
/// they saw, so publishing an older snapshot never moves a counter back.
pub fn publish(stats: &ManagerStats, labels: &[Label]) {
    record(series(stats), labels);
}

fn record(all: Vec<Series>, labels: &[Label]) {
    for series in all {
        let mut labels = labels.to_vec();
        if let Some(reason) = series.reason {
            labels.push(Label::new("reason", reason));
        }
        match series.kind {
            SeriesKind::Counter => {
                ::metrics::counter!(series.name, labels.iter()).absolute(series.value)
            }
            SeriesKind::Gauge => {
                ::metrics::gauge!(series.name, labels.iter()).set(series.value as f64)
            }
        }
    }
}

/// Publishes `stats()` every `every` on the current tokio runtime, until
/// `stats` returns `None` (the manager is gone) or the task is aborted.
///
/// Hold the manager weakly so the task ends with it:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use websocket_manager::managers::UnifiedWebSocketManager;
/// use websocket_manager::metrics::{Label, spawn_publisher};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let manager = Arc::new(UnifiedWebSocketManager::default());
/// let weak = Arc::downgrade(&manager);
/// let task = spawn_publisher(Duration::from_secs(10), vec![Label::new("manager", "unified")], move || {
///     weak.upgrade().map(|manager| manager.stats())
/// });
/// drop(manager);
/// task.await.unwrap(); // ended at its first tick: the manager is gone
/// # });
/// ```
///
/// # Panics
///
/// Outside a tokio runtime (as `tokio::spawn` does); the runtime needs its
/// timer enabled.
pub fn spawn_publisher<F>(
    every: Duration,
    labels: Vec<Label>,
    mut stats: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Option<ManagerStats> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match stats() {
                Some(snapshot) => publish(&snapshot, &labels),
                None => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managers::IndexSizes;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// A snapshot whose every field has its own value (a field added later
    /// defaults to 0 and is caught by the next test).
    #[allow(clippy::needless_update)]
    fn distinct_stats() -> ManagerStats {
        ManagerStats {
            indexes: IndexSizes {
                connections: 1,
                users: 2,
                sockets: 3,
                threads: 4,
                history_users: 5,
            },
            messages_sent: 6,
            messages_failed: 7,
            messages_dropped: 8,
            slow_consumer_disconnects: 9,
            critical_rejected: 10,
            history_evicted: 11,
            history_expired: 12,
            pending_expired: 13,
            replayed: 14,
            resync_notices: 15,
            pending_discarded_at_shutdown: 16,
            ..ManagerStats::default()
        }
    }

    fn json_leaves(value: &serde_json::Value, out: &mut Vec<u64>) {
        match value {
            serde_json::Value::Object(fields) => {
                fields.values().for_each(|v| json_leaves(v, out));
            }
            other => out.push(other.as_u64().expect("a numeric stats field")),
        }
    }

    #[test]
    fn every_stats_field_is_published_exactly_once() {
        // A field added to ManagerStats without its line in `series` fails
        // here (it serializes, but no series carries it).
        let stats = distinct_stats();
        let mut fields = Vec::new();
        json_leaves(&serde_json::to_value(stats).unwrap(), &mut fields);
        let mut published: Vec<u64> = series(&stats).iter().map(|s| s.value).collect();
        fields.sort_unstable();
        published.sort_unstable();
        assert_eq!(published, fields);
        let mut names: Vec<_> = series(&stats).iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), fields.len(), "duplicate metric names");
    }

    #[test]
    fn publish_sets_counters_and_gauges_with_the_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let labels = [Label::new("manager", "unified")];
        ::metrics::with_local_recorder(&recorder, || {
            publish(&distinct_stats(), &labels);
            // An older snapshot must not move a counter back.
            publish(&ManagerStats::default(), &labels);
        });
        let values: std::collections::HashMap<String, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                assert_eq!(
                    key.labels().collect::<Vec<_>>(),
                    labels.iter().collect::<Vec<_>>()
                );
                (key.name().to_owned(), value)
            })
            .collect();
        assert_eq!(values.len(), series(&ManagerStats::default()).len());
        assert_eq!(
            values["websocket_manager_messages_sent_total"],
            DebugValue::Counter(6)
        );
        assert_eq!(
            values["websocket_manager_slow_consumer_disconnects_total"],
            DebugValue::Counter(9)
        );
        // Gauges follow the latest snapshot.
        assert_eq!(
            values["websocket_manager_connections"],
            DebugValue::Gauge(0.0.into())
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_cluster_link_counters_are_published() {
        let mut stats = crate::managers::ClusterStats::zero();
        stats.reconnects = 3;
        stats.probe_timeouts = 4;
        stats.fenced = 5;
        stats.link = crate::managers::LinkState::Fenced { since_ms: 1 };
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || publish_cluster(&stats, &[]));
        let values: std::collections::HashMap<String, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
            .collect();
        assert_eq!(values.len(), cluster_series(&stats).len());
        let counter = |name: &str| &values[name];
        assert_eq!(
            counter("websocket_manager_cluster_reconnects_total"),
            &DebugValue::Counter(3)
        );
        assert_eq!(
            counter("websocket_manager_cluster_probe_timeouts_total"),
            &DebugValue::Counter(4)
        );
        assert_eq!(
            counter("websocket_manager_cluster_fenced_total"),
            &DebugValue::Counter(5)
        );
        assert_eq!(
            counter("websocket_manager_cluster_fenced"),
            &DebugValue::Gauge(1.0.into())
        );
    }

    #[test]
    fn the_publisher_republishes_on_its_timer_and_stops_with_the_manager() {
        use crate::managers::UnifiedWebSocketManager;
        use crate::{
            UserId, WebSocketConnection, WebSocketHandle, WebSocketManager, managers::ManagerConfig,
        };
        use std::sync::Arc;

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let connections = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find(|(key, ..)| key.key().name() == "websocket_manager_connections")
                .map(|(.., value)| value)
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // The local recorder is per thread; a current-thread runtime runs
        // the publisher on this one.
        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
                let weak = Arc::downgrade(&manager);
                let every = Duration::from_secs(10);
                let task = spawn_publisher(every, Vec::new(), move || {
                    weak.upgrade().map(|manager| manager.stats())
                });
                tokio::time::sleep(every / 2).await;
                assert_eq!(connections(), Some(DebugValue::Gauge(0.0.into())));

                let (socket, _queue) = WebSocketHandle::channel(manager.config().queue_limits());
                let alice = UserId::new("alice").unwrap();
                manager
                    .add_connection(WebSocketConnection::new(alice, socket))
                    .await
                    .unwrap();
                // Not before the next tick...
                assert_eq!(connections(), Some(DebugValue::Gauge(0.0.into())));
                tokio::time::sleep(every).await;
                // ...then the new snapshot.
                assert_eq!(connections(), Some(DebugValue::Gauge(1.0.into())));

                drop(manager);
                tokio::time::timeout(every * 2, task)
                    .await
                    .expect("the publisher outlived its manager")
                    .unwrap();
            });
        });
    }
}
