//! What the nodes of a cluster say to each other: the Redis key and channel
//! names, and the messages on the channels ([`BusMessage`]).

use serde::{Deserialize, Serialize};

use crate::ids::{ConnectionId, IdempotencyKey, ThreadId, UserId};

/// Every key and channel name of one cluster, under its prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every node listens here: critical events, sends to several nodes,
    /// presence changes.
    pub fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// Only `node` listens here: sends whose recipients are all on it.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// Hash: `e` (stream id, the epoch), `s` (last sequence), `t` (last
    /// sequence a connection has taken).
    pub fn stream_meta(&self, user: &UserId) -> String {
        format!("{}:meta:{user}", self.prefix)
    }

    /// An idempotency key of the user's, holding `<stream>:<sequence>` of
    /// the event first emitted with it, for the window. The user id's length
    /// comes first, so no (user, key) pair can spell another's name.
    pub fn idempotency(&self, user: &UserId, key: &IdempotencyKey) -> String {
        format!("{}:idem:{}:{user}:{key}", self.prefix, user.as_str().len())
    }

    /// The user's retained critical events, entry id `<sequence>-1`.
    pub fn stream(&self, user: &UserId) -> String {
        format!("{}:stream:{user}", self.prefix)
    }

    /// Set of node ids that have announced themselves.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Exists (with a TTL) while `node` is alive.
    pub fn alive(&self, node: &str) -> String {
        format!("{}:alive:{node}", self.prefix)
    }

    /// Hash of `node`'s connections: connection id -> [`PresenceEntry`].
    pub fn presence(&self, node: &str) -> String {
        format!("{}:presence:{node}", self.prefix)
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
