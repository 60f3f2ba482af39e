//! What the nodes of a cluster say to each other: the Redis key and channel
//! names, and the messages on the channels ([`BusMessage`]).

use serde::{Deserialize, Serialize};

use crate::ids::{ConnectionId, IdempotencyKey, ThreadId, UserId};

/// Every key and channel name of one cluster, under its prefix.
///
/// On one server (or under Sentinel) the names are `PREFIX:meta:USER` and
/// the like, with one bus channel. On a Redis Cluster every name carries a
/// hash tag, `PREFIX:{TAG}:meta:USER`, so that what one command or script
/// touches is in one slot:
///
/// * a user's keys (stream, meta, idempotency keys) and the bus channel its
///   critical events are published on (`SPUBLISH` from the append script)
///   share the tag of the user's *bucket*: one of [`BUCKETS`], by a hash of
///   the user id. The append script stays atomic and single-slot, and the
///   events of one user stay in order on one channel.
/// * the cluster-wide keys (node registry, heartbeats, presence hashes) and
///   the presence announcements share the tag of the prefix's bucket, so
///   each heartbeat or presence pipeline is single-slot too.
/// * a node's own channel has the tag of the node id's bucket.
///
/// The tag of bucket `i` is chosen so its slot falls in the `i`-th of
/// [`BUCKETS`] equal slot ranges: the buckets spread evenly over the
/// masters, whatever contiguous ranges `redis-cli --cluster create` or a
/// reshard gave them. A node subscribes to every bucket's bus channel.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// The tag of each bucket (Redis Cluster), or none (one server).
    tags: Option<std::sync::Arc<[String]>>,
}

/// How many buckets a Redis Cluster's users are spread over: each a slot
/// of its own (so the unit of resharding), and each a sharded bus channel
/// every node subscribes to.
pub(crate) const BUCKETS: usize = 128;

/// Redis Cluster's slot count.
const SLOTS: usize = 16384;

/// CRC16/XMODEM, the hash Redis Cluster maps keys to slots with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a hash tag's text.
pub(crate) fn slot_of(tag: &str) -> usize {
    usize::from(crc16(tag.as_bytes())) % SLOTS
}

/// The bucket `name` (a user, thread, node id or prefix) belongs to.
fn bucket_of(name: &str) -> usize {
    slot_of(name) * BUCKETS / SLOTS
}

/// For each bucket, a short tag whose slot is in the bucket's range.
fn bucket_tags() -> Vec<String> {
    (0..BUCKETS)
        .map(|bucket| {
            (0..1_000_000u32)
                .map(|n| format!("{bucket}.{n}"))
                .find(|tag| bucket_of(tag) == bucket)
                // Not reached (a tag is found within a few hundred tries);
                // any tag keeps the layout working, less evenly spread.
                .unwrap_or_else(|| bucket.to_string())
        })
        .collect()
}

impl Keys {
    /// The names on one server (or under Sentinel).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            tags: None,
        }
    }

    /// The names on a Redis Cluster: hash-tagged (see [`Keys`]).
    pub fn sharded(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            tags: Some(bucket_tags().into()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PREFIX:` on one server, `PREFIX:{TAG}:` (the tag of `name`'s
    /// bucket) on a Redis Cluster.
    fn head(&self, name: &str) -> String {
        match &self.tags {
            None => format!("{}:", self.prefix),
            Some(tags) => format!("{}:{{{}}}:", self.prefix, tags[bucket_of(name)]),
        }
    }

    /// The head of the cluster-wide keys (the prefix's bucket).
    fn shared_head(&self) -> String {
        self.head(&self.prefix)
    }

    /// The slot of each bucket (Redis Cluster; none on one server): every
    /// key and channel of this cluster is in one of them.
    pub fn bucket_slots(&self) -> Vec<u16> {
        self.tags.as_ref().map_or_else(Vec::new, |tags| {
            tags.iter()
                .filter_map(|tag| u16::try_from(slot_of(tag)).ok())
                .collect()
        })
    }

    /// The pipeline group of `user`'s keys: commands of one group may share
    /// a pipeline (its bucket on a Redis Cluster; all in one otherwise).
    pub fn group(&self, user: &UserId) -> usize {
        match &self.tags {
            None => 0,
            Some(_) => bucket_of(user.as_str()),
        }
    }

    /// Every node listens here: presence changes, a node leaving (and on
    /// one server everything else `bus_of` names).
    pub fn bus(&self) -> String {
        format!("{}bus", self.shared_head())
    }

    /// Where `message` goes when several nodes must hear it: a user's
    /// critical events and sends on the user's bucket channel, a thread's
    /// sends on the thread's, the rest on [`bus`](Self::bus). One channel
    /// on one server.
    pub fn bus_of(&self, message: &BusMessage) -> String {
        match message {
            BusMessage::Critical { user, .. } | BusMessage::User { user, .. } => {
                self.user_bus(user)
            }
            BusMessage::Thread { thread, .. } => format!("{}bus", self.head(thread.as_str())),
            _ => self.bus(),
        }
    }

    /// The channel of `user`'s critical events.
    pub fn user_bus(&self, user: &UserId) -> String {
        format!("{}bus", self.head(user.as_str()))
    }

    /// Only `node` listens here: sends whose recipients are all on it.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.head(node))
    }

    /// Every channel `node` subscribes to: the bus (each bucket's, on a
    /// Redis Cluster) and its own.
    pub fn channels(&self, node: &str) -> Vec<String> {
        let mut channels = match &self.tags {
            None => vec![self.bus()],
            Some(tags) => tags
                .iter()
                .map(|tag| format!("{}:{{{tag}}}:bus", self.prefix))
                .collect(),
        };
        channels.push(self.node_channel(node));
        channels
    }

    /// Hash: `e` (stream id, the epoch), `s` (last sequence), `t` (last
    /// sequence a connection has taken).
    pub fn stream_meta(&self, user: &UserId) -> String {
        format!("{}meta:{user}", self.head(user.as_str()))
    }

    /// An idempotency key of the user's, holding `<stream>:<sequence>` of
    /// the event first emitted with it, for the window. The user id's length
    /// comes first, so no (user, key) pair can spell another's name.
    pub fn idempotency(&self, user: &UserId, key: &IdempotencyKey) -> String {
        format!(
            "{}idem:{}:{user}:{key}",
            self.head(user.as_str()),
            user.as_str().len()
        )
    }

    /// The attempt key of one append of `user`'s (Redis Cluster only; see
    /// `Backplane::append`): `attempt` names the call (node id, the
    /// backplane's random incarnation, a counter), so only a re-send of
    /// that very command can find it set. Its own namespace (`try:`, not
    /// `idem:`): no idempotency key of a user can spell it. In the user's
    /// bucket, so the append script stays single-slot.
    pub fn attempt(&self, user: &UserId, attempt: &str) -> String {
        format!("{}try:{attempt}", self.head(user.as_str()))
    }

    /// The user's retained critical events, entry id `<sequence>-1`.
    pub fn stream(&self, user: &UserId) -> String {
        format!("{}stream:{user}", self.head(user.as_str()))
    }

    /// Set of node ids that have announced themselves.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.shared_head())
    }

    /// Exists (with a TTL) while `node` is alive.
    pub fn alive(&self, node: &str) -> String {
        format!("{}alive:{node}", self.shared_head())
    }

    /// Hash of `node`'s connections: connection id -> [`PresenceEntry`].
    pub fn presence(&self, node: &str) -> String {
        format!("{}presence:{node}", self.shared_head())
    }
}

/// One connection as the presence hash keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PresenceEntry {
    #[serde(rename = "u")]
    pub user: UserId,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadId>,
    #[serde(rename = "t")]
    pub connected_at_ms: u64,
}

/// A message on a cluster channel. `o` is always the sending node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum BusMessage {
    /// A critical event, published by the append script (so in stream
    /// order, once per event). Numbers travel as strings: Lua's cjson would
    /// write large integers in floating-point notation.
    Critical {
        #[serde(rename = "u")]
        user: UserId,
        #[serde(rename = "e")]
        stream: String,
        #[serde(rename = "s")]
        sequence: String,
        #[serde(rename = "y")]
        event_type: String,
        #[serde(rename = "t")]
        timestamp: String,
        /// The event's data, as JSON text.
        #[serde(rename = "d")]
        data: String,
    },
    /// An ordinary send to a user's connections.
    User {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "u")]
        user: UserId,
        #[serde(rename = "f")]
        frame: String,
    },
    /// An ordinary send to a thread's connections.
    Thread {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "h")]
        thread: ThreadId,
        #[serde(rename = "f")]
        frame: String,
    },
    /// A connection was added on node `o`.
    Join {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "c")]
        connection: ConnectionId,
        #[serde(flatten)]
        entry: PresenceEntry,
    },
    /// A connection of node `o` was removed.
    Leave {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "c")]
        connection: ConnectionId,
    },
    /// Node `o` bound one of its connections to a thread.
    Moved {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "c")]
        connection: ConnectionId,
        #[serde(rename = "h")]
        thread: ThreadId,
    },
    /// Asks the node that holds `connection` to bind it to `thread`
    /// (`update_connection_thread` called on another node).
    Bind {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "c")]
        connection: ConnectionId,
        #[serde(rename = "h")]
        thread: ThreadId,
    },
    /// Node `o` shut down cleanly: forget its connections now.
    Bye {
        #[serde(rename = "o")]
        origin: String,
    },
    /// Node `o` probing its own subscription: published on its own
    /// channel, it proves the link works both ways when it comes back.
    Probe {
        #[serde(rename = "o")]
        origin: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Redis's own hash tag rule: the text between the first `{` and the
    /// next `}`, when not empty.
    fn slot_of_key(key: &str) -> usize {
        let tag = key
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag)
            .filter(|tag| !tag.is_empty());
        slot_of(tag.unwrap_or(key))
    }

    #[test]
    fn crc16_is_redis_clusters_hash() {
        // From the Redis Cluster specification: the slot of "123456789"'s
        // CRC16/XMODEM is 0x31C3; and `CLUSTER KEYSLOT foo` is 12182.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of("foo"), 12182);
    }

    #[test]
    fn on_a_redis_cluster_one_users_keys_and_bus_share_a_slot_and_buckets_spread() {
        let keys = Keys::sharded("wsm");
        for name in ["alice", "bob", "{evil}", "x}y{z", "ünï"] {
            let user = UserId::new(name).unwrap();
            let key = IdempotencyKey::new("k{1}").unwrap();
            let slot = slot_of_key(&keys.stream_meta(&user));
            for other in [
                keys.stream(&user),
                keys.idempotency(&user, &key),
                keys.attempt(&user, "n1:00000000000000ff:7"),
                keys.user_bus(&user),
            ] {
                assert_eq!(slot_of_key(&other), slot, "{other}");
            }
            // Attempt keys have a namespace of their own: no user key
            // (whatever its text) spells one.
            let attempt = keys.attempt(&user, "n1:00000000000000ff:7");
            let spelled = IdempotencyKey::new("n1:00000000000000ff:7").unwrap();
            assert_ne!(keys.idempotency(&user, &spelled), attempt);
            assert!(attempt.contains("}:try:"), "{attempt}");
        }
        let shared = slot_of_key(&keys.nodes());
        for key in [keys.alive("n1"), keys.presence("n2"), keys.bus()] {
            assert_eq!(slot_of_key(&key), shared, "{key}");
        }
        // Bucket i's slot is in the i-th range: even over any masters.
        let slots: Vec<usize> = keys
            .tags
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| slot_of(t))
            .collect();
        assert_eq!(slots.len(), BUCKETS);
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot * BUCKETS / SLOTS, i);
        }
        // Every node hears every bucket, and its own channel.
        let channels = keys.channels("n1");
        assert_eq!(channels.len(), BUCKETS + 1);
        assert!(channels.contains(&keys.user_bus(&UserId::new("alice").unwrap())));
        assert!(channels.contains(&keys.bus()));
        // One server: the names as they always were.
        let plain = Keys::new("wsm");
        assert_eq!(plain.stream_meta(&UserId::new("a").unwrap()), "wsm:meta:a");
        assert_eq!(plain.user_bus(&UserId::new("a").unwrap()), "wsm:bus");
        assert_eq!(plain.channels("n1"), ["wsm:bus", "wsm:node:n1"]);
    }

    #[test]
    fn bus_messages_round_trip_and_read_what_lua_writes() {
        let join = BusMessage::Join {
            origin: "n1".to_owned(),
            connection: ConnectionId::new("c1").unwrap(),
            entry: PresenceEntry {
                user: UserId::new("alice").unwrap(),
                thread: None,
                connected_at_ms: 5,
            },
        };
        let text = serde_json::to_string(&join).unwrap();
        assert_eq!(
            serde_json::from_str::<BusMessage>(&text).unwrap(),
            join,
            "{text}"
        );
        // What the append script's cjson.encode writes (key order varies).
        let lua = r#"{"s":"7","d":"{\"a\":1}","y":"agent_started","k":"critical","u":"bob","e":"99","t":"12"}"#;
        let BusMessage::Critical {
            user,
            sequence,
            data,
            ..
        } = serde_json::from_str::<BusMessage>(lua).unwrap()
        else {
            panic!("not a critical event")
        };
        assert_eq!(
            (user.as_str(), sequence.as_str(), data.as_str()),
            ("bob", "7", r#"{"a":1}"#)
        );
    }
}
