//! [`Replica`]: this node's copy of the other nodes' connections, so the
//! synchronous queries (`get_user_connections`, `is_connection_active`,
//! health) answer for the whole cluster without waiting on the network.
//!
//! Kept current two ways, in the spirit of Phoenix Presence: every change a
//! node makes is published on the bus (applied within milliseconds), and
//! every heartbeat interval each node reads the others' heartbeat keys,
//! drops the nodes whose key has expired and re-reads the presence hash of
//! a node whose version (in its key) changed: a node rewrites its hash
//! under a new version when its announcements may have been lost, and a
//! node that lost messages itself reads every hash (see `maintenance`), as
//! it also does every 20 heartbeats.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use parking_lot::RwLock;

use crate::connection::WebSocketConnection;
use crate::health::unix_millis;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::index::LocalIndex;

use super::wire::PresenceEntry;

/// A change of this node's presence, for the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PresenceChange {
    Join(ConnectionId, PresenceEntry),
    Leave(ConnectionId),
    /// A connection bound to a thread: its whole entry, thread included,
    /// so the presence hash (which other nodes re-read) holds the binding,
    /// not only the bus message.
    Moved(ConnectionId, PresenceEntry),
    /// Ask node `.0`, which holds connection `.1`, to bind it to `.2`.
    Bind(String, ConnectionId, ThreadId),
}

/// What the presence hash keeps of a connection.
pub(crate) fn presence_of(connection: &WebSocketConnection) -> PresenceEntry {
    PresenceEntry {
        user: connection.user_id.clone(),
        thread: connection.thread_id.clone(),
        connected_at_ms: unix_millis(connection.connected_at),
    }
}

/// Every connection of `index`, as the presence hash keeps it.
pub(crate) fn presence_entries(index: &LocalIndex) -> Vec<(ConnectionId, PresenceEntry)> {
    index
        .connections()
        .iter()
        .map(|c| (c.connection_id.clone(), presence_of(c)))
        .collect()
}

#[derive(Debug, Default)]
struct State {
    by_connection: HashMap<ConnectionId, (String, PresenceEntry)>,
    by_node: HashMap<String, HashSet<ConnectionId>>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
    by_thread: HashMap<ThreadId, HashSet<ConnectionId>>,
    /// Changes heard on the bus, with when: a refresh whose read started
    /// before a change must not undo it (`true`: joined, `false`: left).
    recent: HashMap<ConnectionId, (Instant, bool)>,
}

impl State {
    fn insert(&mut self, node: &str, connection: ConnectionId, entry: PresenceEntry) {
        self.remove(&connection);
        self.by_node
            .entry(node.to_owned())
            .or_default()
            .insert(connection.clone());
        self.by_user
            .entry(entry.user.clone())
            .or_default()
            .insert(connection.clone());
        if let Some(thread) = &entry.thread {
            self.by_thread
                .entry(thread.clone())
                .or_default()
                .insert(connection.clone());
        }
        self.by_connection
            .insert(connection, (node.to_owned(), entry));
    }

    fn remove(&mut self, connection: &ConnectionId) -> Option<(String, PresenceEntry)> {
        let (node, entry) = self.by_connection.remove(connection)?;
        remove_from(&mut self.by_node, &node, connection);
        remove_from(&mut self.by_user, &entry.user, connection);
        if let Some(thread) = &entry.thread {
            remove_from(&mut self.by_thread, thread, connection);
        }
        Some((node, entry))
    }
}

fn remove_from<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, HashSet<ConnectionId>>,
    key: &K,
    connection: &ConnectionId,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(connection);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The other nodes' connections as this node last heard of them.
#[derive(Debug, Default)]
pub(crate) struct Replica {
    state: RwLock<State>,
}

impl Replica {
    pub fn join(&self, node: &str, connection: ConnectionId, entry: PresenceEntry) {
        let mut state = self.state.write();
        state
            .recent
            .insert(connection.clone(), (Instant::now(), true));
        state.insert(node, connection, entry);
    }

    pub fn leave(&self, node: &str, connection: &ConnectionId) {
        let mut state = self.state.write();
        // Only the node that holds it may remove it (a late message from a
        // node that lost it must not remove a reconnect elsewhere).
        if state
            .by_connection
            .get(connection)
            .is_some_and(|(holder, _)| holder == node)
        {
            state.remove(connection);
            state
                .recent
                .insert(connection.clone(), (Instant::now(), false));
        }
    }

    pub fn moved(&self, node: &str, connection: &ConnectionId, thread: ThreadId) {
        let mut state = self.state.write();
        if let Some((holder, mut entry)) = state.remove(connection) {
            if holder == node {
                entry.thread = Some(thread);
                // A re-read of the holder's presence that began before
                // this message must not undo the binding.
                state
                    .recent
                    .insert(connection.clone(), (Instant::now(), true));
            }
            state.insert(&holder, connection.clone(), entry);
        }
    }

    /// Replaces everything known of `node` with `entries`, read from Redis
    /// at `read_at`; joins and leaves heard on the bus since then win.
    pub fn replace_node(
        &self,
        node: &str,
        entries: Vec<(ConnectionId, PresenceEntry)>,
        read_at: Instant,
    ) {
        let mut state = self.state.write();
        let newer = |state: &State, connection: &ConnectionId| {
            state
                .recent
                .get(connection)
                .is_some_and(|(at, _)| *at >= read_at)
        };
        let old: Vec<ConnectionId> = state
            .by_node
            .get(node)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        for connection in &old {
            if !newer(&state, connection) {
                state.remove(connection);
            }
        }
        for (connection, entry) in entries {
            if !newer(&state, &connection) {
                state.insert(node, connection, entry);
            }
        }
        // What is older than this read is settled by it.
        state.recent.retain(|_, (at, _)| *at >= read_at);
    }

    /// Forgets the joins and leaves heard before `read_at`: a refresh that
    /// started then found every node's presence read or unchanged since.
    pub fn settle(&self, read_at: Instant) {
        self.state
            .write()
            .recent
            .retain(|_, (at, _)| *at >= read_at);
    }

    /// Forgets `node` (dead or gone); returns how many connections it held.
    pub fn drop_node(&self, node: &str) -> usize {
        let mut state = self.state.write();
        let held: Vec<ConnectionId> = state
            .by_node
            .get(node)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        for connection in &held {
            state.remove(connection);
        }
        held.len()
    }

    pub fn nodes(&self) -> Vec<String> {
        self.state.read().by_node.keys().cloned().collect()
    }

    pub fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.state
            .read()
            .by_user
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    pub fn has_user(&self, user: &UserId) -> bool {
        self.state.read().by_user.contains_key(user)
    }

    /// The nodes that hold a connection of `user`.
    pub fn user_nodes(&self, user: &UserId) -> HashSet<String> {
        let state = self.state.read();
        nodes_of(&state, state.by_user.get(user))
    }

    /// The nodes that hold a connection bound to `thread`.
    pub fn thread_nodes(&self, thread: &ThreadId) -> HashSet<String> {
        let state = self.state.read();
        nodes_of(&state, state.by_thread.get(thread))
    }

    /// The node holding `connection`, if another node does.
    pub fn holder(&self, connection: &ConnectionId) -> Option<String> {
        self.state
            .read()
            .by_connection
            .get(connection)
            .map(|(node, _)| node.clone())
    }

    /// `user`'s connections on other nodes, with their node.
    pub fn user_entries(&self, user: &UserId) -> Vec<(ConnectionId, String, PresenceEntry)> {
        let state = self.state.read();
        state
            .by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                state
                    .by_connection
                    .get(c)
                    .map(|(node, entry)| (c.clone(), node.clone(), entry.clone()))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.state.read().by_connection.len()
    }
}

fn nodes_of(state: &State, connections: Option<&HashSet<ConnectionId>>) -> HashSet<String> {
    connections
        .into_iter()
        .flatten()
        .filter_map(|c| state.by_connection.get(c).map(|(node, _)| node.clone()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(user: &str, thread: Option<&str>) -> PresenceEntry {
        PresenceEntry {
            user: UserId::new(user).unwrap(),
            thread: thread.map(|t| ThreadId::new(t).unwrap()),
            connected_at_ms: 1,
        }
    }

    fn id(s: &str) -> ConnectionId {
        ConnectionId::new(s).unwrap()
    }

    #[test]
    fn joins_moves_and_leaves_keep_every_index_in_step() {
        let replica = Replica::default();
        let alice = UserId::new("alice").unwrap();
        let thread = ThreadId::new("t1").unwrap();
        replica.join("n1", id("c1"), entry("alice", None));
        replica.join("n2", id("c2"), entry("alice", Some("t0")));
        assert_eq!(replica.user_connections(&alice).len(), 2);
        assert_eq!(replica.user_nodes(&alice).len(), 2);
        replica.moved("n1", &id("c1"), thread.clone());
        assert_eq!(
            replica.thread_nodes(&thread),
            HashSet::from(["n1".to_owned()])
        );
        // A leave from a node that does not hold the connection is ignored.
        replica.leave("n2", &id("c1"));
        assert!(replica.holder(&id("c1")).is_some());
        replica.leave("n1", &id("c1"));
        assert!(replica.thread_nodes(&thread).is_empty());
        assert_eq!(replica.drop_node("n2"), 1);
        assert!(!replica.has_user(&alice));
        assert_eq!(replica.len(), 0);
    }

    #[test]
    fn a_refresh_replaces_what_a_node_holds() {
        let replica = Replica::default();
        replica.join("n1", id("stale"), entry("bob", None));
        replica.replace_node(
            "n1",
            vec![(id("fresh"), entry("carol", None))],
            Instant::now(),
        );
        assert!(replica.holder(&id("stale")).is_none());
        assert_eq!(replica.holder(&id("fresh")).as_deref(), Some("n1"));
        assert_eq!(replica.nodes(), vec!["n1".to_owned()]);
    }

    #[test]
    fn a_refresh_read_before_a_bus_change_does_not_undo_it() {
        let replica = Replica::default();
        replica.join("n1", id("gone"), entry("bob", None));
        let read_at = Instant::now();
        // Heard on the bus after the read started: a join and a leave.
        replica.join("n1", id("new"), entry("bob", None));
        replica.leave("n1", &id("gone"));
        // The (older) snapshot still has `gone` and lacks `new`.
        replica.replace_node("n1", vec![(id("gone"), entry("bob", None))], read_at);
        assert!(replica.holder(&id("new")).is_some(), "the join was undone");
        assert!(
            replica.holder(&id("gone")).is_none(),
            "the leave was undone"
        );
        // The next refresh settles everything.
        replica.replace_node("n1", vec![(id("new"), entry("bob", None))], Instant::now());
        assert_eq!(replica.len(), 1);
    }
}
