//! The checks themselves: one async function per [`Check`](super::Check),
//! each returning the first expectation the manager broke.

use std::collections::HashSet;

use super::probe::{Probe, Step, delivery_text, fail};
use crate::connection::QueueLimits;
use crate::context::ManagerMode;
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::ids::ConnectionId;
use crate::managers::events::CriticalEnvelope;
use crate::offset::{EventPrint, StreamOffset};
use crate::protocol::WebSocketManager;

pub(super) async fn add_then_lookup_by_socket(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let a = p.connect(&owner, "a").await?;
    let id = p.id(a).clone();
    let socket = p.sockets[a].handle.clone();
    match p.manager.get_connection(&id) {
        Some(found) if found.user_id == owner && found.websocket.id() == socket.id() => {}
        Some(found) => {
            return Err(fail(
                "get_connection",
                format!("connection `{id}` of user `{owner}` on {}", socket.id()),
                format!("user `{}` on {}", found.user_id, found.websocket.id()),
                "store the connection as given to add_connection",
            ));
        }
        None => {
            return Err(fail(
                "get_connection",
                format!("Some(connection `{id}`) right after add_connection"),
                "None",
                "index connections by id in add_connection",
            ));
        }
    }
    let by_socket = p.manager.get_connection_id_by_websocket(&socket);
    if by_socket.as_ref() != Some(&id) {
        return Err(fail(
            "get_connection_id_by_websocket",
            format!("Some({id}) for the socket just added ({})", socket.id()),
            format!("{by_socket:?}"),
            "keep a map from `websocket.id()` (SocketId) to connection id, filled in add_connection and cleared in remove_connection, and look the socket up there (agent runs call this on every run)",
        ));
    }
    let users = p.manager.get_user_connections(&owner);
    if !users.contains(&id) {
        return Err(fail(
            "get_user_connections",
            format!("a set containing `{id}`"),
            format!("{users:?}"),
            "index connections by user id in add_connection",
        ));
    }
    if !p.manager.is_connection_active(&owner) {
        return Err(fail(
            "is_connection_active",
            format!("true for user `{owner}` with an open connection"),
            "false",
            "answer from the user index: true when the user has an open connection",
        ));
    }
    Ok(())
}

/// What a refused `add_connection` answered, for a failure message.
fn add_text(result: &Result<(), ManagerError>) -> String {
    match result {
        Ok(()) => "Ok(()): the connection was accepted".to_owned(),
        Err(error) => format!("Err({error})"),
    }
}

pub(super) async fn duplicate_connection_id_refused(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let first = p.connect(&owner, "first").await?;
    let id = p.id(first).clone();
    // A second socket under the same connection id.
    let second = p.socket(&owner, "second socket, same connection id");
    p.sockets[second].connection_id = id.clone();
    let second_socket = p.sockets[second].handle.clone();
    let result = p.add(p.connection(second)).await;
    if !matches!(&result, Err(ManagerError::DuplicateConnection(refused)) if *refused == id) {
        return Err(fail(
            "add_connection",
            format!(
                "Err(DuplicateConnection(`{id}`)) for a second connection under id `{id}`, which is registered"
            ),
            add_text(&result),
            "look the id up before inserting and return ManagerError::DuplicateConnection when it is there; never overwrite a registered connection",
        ));
    }
    // The refused socket must not have taken the id over.
    let kept = p.manager.get_connection(&id).map(|c| c.websocket.id());
    let taken_over = kept == Some(second_socket.id())
        || p.manager
            .get_connection_id_by_websocket(&second_socket)
            .is_some();
    if taken_over {
        return Err(fail(
            "add_connection",
            format!("connection `{id}` still on its first socket, and the refused socket unknown"),
            format!(
                "get_connection shows {kept:?}, get_connection_id_by_websocket(refused socket) = {:?}",
                p.manager.get_connection_id_by_websocket(&second_socket)
            ),
            "check for duplicates before writing to any index, so a refused add leaves nothing behind",
        ));
    }
    Ok(())
}

pub(super) async fn duplicate_socket_refused(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let first = p.connect(&owner, "first").await?;
    let first_id = p.id(first).clone();
    let socket = p.sockets[first].handle.clone();
    // A new connection id on the socket that is already registered.
    let second = p.socket(&owner, "same socket, new connection id");
    p.sockets[second].handle = socket.clone();
    let second_id = p.id(second).clone();
    let result = p.add(p.connection(second)).await;
    if !matches!(&result, Err(ManagerError::SocketAlreadyRegistered { socket: s, existing }) if *s == socket.id() && *existing == first_id)
    {
        return Err(fail(
            "add_connection",
            format!(
                "Err(SocketAlreadyRegistered {{ socket: {}, existing: `{first_id}` }}) for connection `{second_id}` on a socket already registered as `{first_id}`",
                socket.id()
            ),
            add_text(&result),
            "look `websocket.id()` up in the socket index before inserting and return ManagerError::SocketAlreadyRegistered when it is there (one socket, one connection)",
        ));
    }
    let by_socket = p.manager.get_connection_id_by_websocket(&socket);
    let registered = p.manager.get_connection(&second_id).is_some()
        || p.manager.get_user_connections(&owner).contains(&second_id)
        || by_socket.as_ref() == Some(&second_id);
    if registered {
        return Err(fail(
            "add_connection",
            format!(
                "no trace of refused connection `{second_id}`; the socket still maps to `{first_id}`"
            ),
            format!(
                "get_connection(`{second_id}`) = {:?}, get_connection_id_by_websocket = {by_socket:?}",
                p.manager
                    .get_connection(&second_id)
                    .map(|c| c.connection_id)
            ),
            "check for duplicates before writing to any index, so a refused add leaves nothing behind",
        ));
    }
    Ok(())
}

pub(super) async fn connection_cap_enforced(p: &mut Probe<'_>, cap: usize) -> Step {
    let owner = p.scope.owner().clone();
    let mut tabs = Vec::with_capacity(cap);
    for n in 1..=cap {
        let index = p.socket(&owner, &format!("tab {n} of {cap}"));
        let result = p.add(p.connection(index)).await;
        if let Err(error) = result {
            return Err(fail(
                "add_connection",
                format!(
                    "Ok(()) for connection {n} of user `{owner}`, within the cap of {cap} (ManagerConfig::max_connections_per_user)"
                ),
                format!("Err({error})"),
                "refuse only when the user already has max_connections_per_user open connections",
            ));
        }
        tabs.push(index);
    }
    let over = p.socket(&owner, "one over the cap");
    let over_id = p.id(over).clone();
    let result = p.add(p.connection(over)).await;
    if !matches!(&result, Err(ManagerError::ConnectionLimit { user_id, limit }) if *user_id == owner && *limit == cap)
    {
        return Err(fail(
            "add_connection",
            format!(
                "Err(ConnectionLimit {{ limit: {cap} }}) for connection {} of user `{owner}`: the cap is {cap} (ManagerConfig::max_connections_per_user)",
                cap + 1
            ),
            add_text(&result),
            "count the user's open connections in add_connection and refuse with ManagerError::ConnectionLimit at context.config.max_connections_per_user()",
        ));
    }
    let held = p.manager.get_user_connections(&owner).len();
    if p.manager.get_connection(&over_id).is_some() || held != cap {
        return Err(fail(
            "add_connection",
            format!("no trace of refused connection `{over_id}`: the user holds {cap} connections"),
            format!("the user holds {held}"),
            "check the cap before writing to any index, so a refused add leaves nothing behind",
        ));
    }
    // The cap counts the connections held now, not every one ever added.
    if let Some(&first) = tabs.first() {
        p.disconnect(first).await?;
        let removed = p.id(first).clone();
        if p.manager.get_user_connections(&owner).contains(&removed) {
            return Err(fail(
                "remove_connection",
                format!(
                    "`{removed}` gone from the user's connections, freeing a place under the cap"
                ),
                "get_user_connections still lists it",
                "remove the connection from every index in remove_connection",
            ));
        }
    }
    let again = p.socket(&owner, "after a removal");
    let result = p.add(p.connection(again)).await;
    if let Err(error) = result {
        return Err(fail(
            "add_connection",
            format!("Ok(()) after one of the user's {cap} connections was removed"),
            format!("Err({error})"),
            "count the connections the user holds now (remove_connection must free a place)",
        ));
    }
    Ok(())
}

/// How a control connection gets its thread.
#[derive(Clone, Copy)]
enum ThreadPath {
    /// `thread_id` set on the connection given to `add_connection`.
    Add,
    /// `update_connection_thread` after the add.
    Update,
}

/// Whether `send_to_thread` reaches a fresh connection of the owner given a
/// fresh thread by `path`: tells a thread index that one method forgot from
/// a `send_to_thread` that finds nothing.
async fn thread_path_works(p: &mut Probe<'_>, path: ThreadPath) -> bool {
    let owner = p.scope.owner().clone();
    let thread = p.scope.thread_id();
    let control = match path {
        ThreadPath::Add => {
            p.connect_with(&owner, "control: thread given on add", |c| {
                c.thread_id = Some(thread.clone());
            })
            .await
        }
        ThreadPath::Update => p.connect(&owner, "control: thread set by update").await,
    };
    let Ok(control) = control else {
        return false;
    };
    if matches!(path, ThreadPath::Update) && p.bind(control, &thread).await.is_err() {
        return false;
    }
    let (nonce, message) = p.message();
    let _ = p.send_to_thread(&thread, message).await;
    p.received(control, &nonce, true).await > 0
}

pub(super) async fn thread_routing(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let thread = p.scope.thread_id();
    let elsewhere = p.scope.thread_id();
    let bound = p.connect(&owner, "bound to the thread").await?;
    let sibling = p.connect(&owner, "same user, another thread").await?;
    let mut others = vec![sibling];
    if p.mode == ManagerMode::Unified {
        let stranger = p.scope.other().clone();
        others.push(p.connect(&stranger, "another user").await?);
    }
    p.bind(bound, &thread).await?;
    p.bind(sibling, &elsewhere).await?;
    let recorded = p
        .manager
        .get_connection(p.id(bound))
        .and_then(|c| c.thread_id);
    if recorded.as_ref() != Some(&thread) {
        return Err(fail(
            "update_connection_thread",
            format!("get_connection to show thread `{thread}` after the update"),
            format!("{recorded:?}"),
            "store the new thread on the connection record",
        ));
    }
    let (nonce, message) = p.message();
    let result = p.send_to_thread(&thread, message).await;
    let on_bound = p.received(bound, &nonce, true).await;
    if on_bound == 0 {
        // Nothing reached the bound socket: either update_connection_thread
        // recorded the thread without indexing it, or send_to_thread finds
        // nothing. A control connection given the thread on add tells.
        let (method, fix) = if result.is_err() && thread_path_works(p, ThreadPath::Add).await {
            (
                "update_connection_thread",
                "move the connection into the new thread's index, not only its record: send_to_thread finds a connection given the thread on add, but not this one",
            )
        } else {
            (
                "send_to_thread",
                "push into the sockets bound to the thread (`websocket.try_send`); never report success without a recipient",
            )
        };
        return Err(fail(
            method,
            format!("the frame on probe socket `bound to the thread` (`{thread}`)"),
            format!(
                "nothing arrived on it; send_to_thread answered {}",
                delivery_text(&result)
            ),
            fix,
        ));
    }
    if on_bound > 1 {
        return Err(fail(
            "send_to_thread",
            "the frame once on probe socket `bound to the thread`",
            format!("it arrived {on_bound} times"),
            "send each frame once per connection",
        ));
    }
    let delivered = 1 + p
        .expect_delivery("send_to_thread", &nonce, &[], &others)
        .await?;
    match result {
        Ok(Delivery::Delivered { recipients, .. }) if recipients == delivered => {}
        other => {
            return Err(fail(
                "send_to_thread",
                format!(
                    "Ok(Delivered {{ recipients: {delivered} }}): the sockets that got the frame"
                ),
                delivery_text(&other),
                "count the connections whose queue accepted the frame",
            ));
        }
    }
    // Moving away must take the connection out of the old thread's set.
    p.bind(bound, &elsewhere).await?;
    let (nonce, message) = p.message();
    let result = p.send_to_thread(&thread, message).await;
    if p.received(bound, &nonce, false).await > 0 {
        return Err(fail(
            "update_connection_thread",
            format!("no frame for thread `{thread}` on a connection that moved away from it"),
            "the frame arrived",
            "remove the connection from the old thread's set when moving it",
        ));
    }
    if result.is_ok() {
        return Err(fail(
            "send_to_thread",
            format!("Err(NotDelivered) for thread `{thread}`, which has no connection left"),
            delivery_text(&result),
            "return ManagerError::NotDelivered { reason: NoThreadConnections } when no connection took the message; never report success without a recipient",
        ));
    }
    Ok(())
}

pub(super) async fn add_indexes_the_thread(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let thread = p.scope.thread_id();
    let bound = p
        .connect_with(&owner, "added with the thread", |c| {
            c.thread_id = Some(thread.clone());
        })
        .await?;
    let (nonce, message) = p.message();
    let result = p.send_to_thread(&thread, message).await;
    // Only the way the thread was set differs from the thread routing
    // check, which judges send_to_thread itself (exact targets, counts):
    // this one asks whether add_connection indexed the thread at all.
    if p.received(bound, &nonce, true).await > 0 {
        return Ok(());
    }
    let recorded = p
        .manager
        .get_connection(p.id(bound))
        .and_then(|c| c.thread_id);
    // A control connection bound by update_connection_thread tells whether
    // send_to_thread works at all.
    let (method, fix) = if result.is_err() && thread_path_works(p, ThreadPath::Update).await {
        (
            "add_connection",
            "index `connection.thread_id` in add_connection, as update_connection_thread does",
        )
    } else {
        (
            "send_to_thread",
            "push into the sockets bound to the thread (`websocket.try_send`); never report success without a recipient",
        )
    };
    Err(fail(
        method,
        format!("the frame on the connection added with thread `{thread}`"),
        format!(
            "nothing arrived; send_to_thread answered {}; get_connection shows thread {recorded:?}",
            delivery_text(&result)
        ),
        fix,
    ))
}

pub(super) async fn unknown_ids(p: &mut Probe<'_>) -> Step {
    let connection = p.scope.connection_id();
    let user = p.scope.user_id();
    let thread = p.scope.thread_id();
    if let Some(found) = p.manager.get_connection(&connection) {
        return Err(fail(
            "get_connection",
            format!("None for unknown connection `{connection}`"),
            format!("Some(connection `{}`)", found.connection_id),
            "return None when the id is not registered",
        ));
    }
    // A socket that was never added.
    let index = p.socket(&user, "never added");
    let socket = p.sockets[index].handle.clone();
    if let Some(found) = p.manager.get_connection_id_by_websocket(&socket) {
        return Err(fail(
            "get_connection_id_by_websocket",
            format!("None for {} that was never added", socket.id()),
            format!("Some({found})"),
            "look the socket up by identity; never fall back to another connection",
        ));
    }
    let users = p.manager.get_user_connections(&user);
    if !users.is_empty() {
        return Err(fail(
            "get_user_connections",
            format!("an empty set for unknown user `{user}`"),
            format!("{users:?}"),
            "return an empty set for a user with no connection",
        ));
    }
    if p.manager.is_connection_active(&user) {
        return Err(fail(
            "is_connection_active",
            format!("false for unknown user `{user}`"),
            "true",
            "return false for a user with no connection",
        ));
    }
    if p.manager.update_connection_thread(&connection, thread) {
        return Err(fail(
            "update_connection_thread",
            format!("false for unknown connection `{connection}`"),
            "true",
            "return false when the connection is not registered",
        ));
    }
    if let Some(removed) = p.remove(&connection).await {
        return Err(fail(
            "remove_connection",
            format!("None for unknown connection `{connection}`"),
            format!("Some(connection `{}`)", removed.connection_id),
            "return None when the id is not registered",
        ));
    }
    let health = p.manager.get_connection_health(&user);
    if health.total_connections != 0 || !health.connections.is_empty() {
        return Err(fail(
            "get_connection_health",
            format!("0 connections for unknown user `{user}`"),
            format!(
                "total_connections = {}, {} summaries",
                health.total_connections,
                health.connections.len()
            ),
            "report an empty health for a user with no connection",
        ));
    }
    Ok(())
}

pub(super) async fn removal_clears_lookups(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let thread = p.scope.thread_id();
    let a = p.connect(&owner, "removed").await?;
    p.bind(a, &thread).await?;
    let id = p.id(a).clone();
    let socket = p.sockets[a].handle.clone();
    match p.remove(&id).await {
        Some(removed) if removed.connection_id == id => {}
        other => {
            return Err(fail(
                "remove_connection",
                format!("Some(connection `{id}`)"),
                format!("{:?}", other.map(|c| c.connection_id)),
                "return the connection that was removed",
            ));
        }
    }
    // A lookup that still finds the connection answers from an index
    // remove_connection left behind: the fault is the removal's (the lookups
    // themselves are proven on fresh and unknown ids by other checks).
    let fix = "remove the connection from every index (by id, by user, by socket, by thread) in remove_connection";
    if let Some(found) = p.manager.get_connection(&id) {
        return Err(fail(
            "remove_connection",
            format!("get_connection(`{id}`) to answer None after the removal"),
            format!(
                "Some(connection `{}`): the id index still holds it",
                found.connection_id
            ),
            fix,
        ));
    }
    if let Some(found) = p.manager.get_connection_id_by_websocket(&socket) {
        return Err(fail(
            "remove_connection",
            "get_connection_id_by_websocket to answer None for the removed connection's socket",
            format!("Some({found}): the socket index still holds it"),
            fix,
        ));
    }
    let users = p.manager.get_user_connections(&owner);
    if users.contains(&id) {
        return Err(fail(
            "remove_connection",
            format!("get_user_connections to answer a set without removed `{id}`"),
            format!("{users:?}: the user index still holds it"),
            fix,
        ));
    }
    if p.manager.is_connection_active(&owner) {
        // The user index is clear (checked just above): this answer does not
        // come from it.
        return Err(fail(
            "is_connection_active",
            "false after the user's only connection was removed",
            "true, while get_user_connections answers an empty set",
            "answer from the user index: true only while the user has an open connection there",
        ));
    }
    let (nonce, message) = p.message();
    let result = p.send_to_thread(&thread, message).await;
    if p.received(a, &nonce, false).await > 0 {
        return Err(fail(
            "remove_connection",
            format!("no frame for thread `{thread}` on the removed connection's socket"),
            format!("send_to_thread reached it ({})", delivery_text(&result)),
            fix,
        ));
    }
    if result.is_ok() {
        return Err(fail(
            "send_to_thread",
            format!("an error: thread `{thread}` lost its only connection"),
            format!("{}, though no socket got the frame", delivery_text(&result)),
            "return ManagerError::NotDelivered { reason: NoThreadConnections } when no connection took the message; never report success without a recipient",
        ));
    }
    let (nonce, message) = p.message();
    let result = p.send_to_user(&owner, message).await;
    if p.received(a, &nonce, false).await > 0 {
        return Err(fail(
            "remove_connection",
            "no frame for the user on the removed connection's socket",
            format!("send_to_user reached it ({})", delivery_text(&result)),
            fix,
        ));
    }
    if result.is_ok() {
        return Err(fail(
            "send_to_user",
            "an error: the user has no connection left",
            format!("{}, though no socket got the frame", delivery_text(&result)),
            "return ManagerError::NotDelivered { reason: NoConnections } when no connection took the message; never report success without a recipient",
        ));
    }
    if let Some(again) = p.remove(&id).await {
        return Err(fail(
            "remove_connection",
            "None when removing the same connection twice",
            format!("Some(connection `{}`)", again.connection_id),
            fix,
        ));
    }
    Ok(())
}

pub(super) async fn removal_closes_the_socket(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let a = p.connect(&owner, "removed").await?;
    p.disconnect(a).await?;
    if !p.closed(a).await {
        let id = p.id(a).clone();
        return Err(fail(
            "remove_connection",
            format!(
                "the socket of removed connection `{id}` closed (the writer sends a close frame)"
            ),
            "the socket is still open: the client would stay connected to a server that forgot it",
            "call `connection.websocket.close(CloseReason::normal())` on the connection you removed",
        ));
    }
    Ok(())
}

pub(super) async fn delivery_counts(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let (_, message) = p.message();
    let result = p.send_to_user(&owner, message).await;
    if !matches!(result, Err(ManagerError::NotDelivered { .. })) {
        return Err(fail(
            "send_to_user",
            format!("Err(NotDelivered) for user `{owner}` who has no connection"),
            delivery_text(&result),
            "return ManagerError::NotDelivered { reason: NoConnections } when no connection took the message; never report success without a recipient",
        ));
    }
    let first = p.connect(&owner, "first tab").await?;
    let second = p.connect(&owner, "second tab").await?;
    let mut others = Vec::new();
    if p.mode == ManagerMode::Unified {
        let stranger = p.scope.other().clone();
        others.push(p.connect(&stranger, "another user").await?);
    }
    let (nonce, message) = p.message();
    let result = p.send_to_user(&owner, message).await;
    let got = p
        .expect_delivery("send_to_user", &nonce, &[first, second], &others)
        .await?;
    match result {
        Ok(Delivery::Delivered { recipients, .. }) if recipients == got => {}
        other => {
            return Err(fail(
                "send_to_user",
                format!("Ok(Delivered {{ recipients: {got} }}): the sockets that got the frame"),
                delivery_text(&other),
                "count the connections whose queue accepted the frame and report that number",
            ));
        }
    }
    let (nonce, data) = p.message();
    let result = p.emit(&owner, "agent_started", data).await;
    let got = p
        .expect_delivery("emit_critical_event", &nonce, &[first, second], &others)
        .await?;
    match result {
        Ok(Delivery::Delivered { recipients, .. }) if recipients == got => {}
        other => {
            return Err(fail(
                "emit_critical_event",
                format!("Ok(Delivered {{ recipients: {got} }}) for a connected user"),
                delivery_text(&other),
                "deliver critical events to every open connection now, and report the count; queue them only when none can take them",
            ));
        }
    }
    Ok(())
}

/// Queue limits of a socket whose client stopped reading: one frame fills it.
fn stalled_limits() -> QueueLimits {
    QueueLimits::new(1, 1 << 20)
}

pub(super) async fn full_socket_does_not_block_sends(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let stalled = p.socket_with_limits(&owner, "stalled: its queue is full", stalled_limits());
    p.add_or_fail(stalled, &owner).await?;
    let reading = p.connect(&owner, "reading").await?;
    p.fill(stalled);
    // A manager that waits for room never returns here: the check's time
    // limit then fails it, naming send_to_user.
    let (nonce, message) = p.message();
    let result = p.send_to_user(&owner, message).await;
    let got = p
        .expect_delivery("send_to_user", &nonce, &[reading], &[])
        .await?;
    match result {
        Ok(Delivery::Delivered { recipients, .. }) if recipients == got => Ok(()),
        other => Err(fail(
            "send_to_user",
            format!(
                "Ok(Delivered {{ recipients: {got} }}): the reading socket took the frame, the full one could not"
            ),
            delivery_text(&other),
            "try_send into each socket without waiting; count only the sockets that took the frame, and apply the slow-consumer policy to a full one (websocket_manager::deliver_frame)",
        )),
    }
}

pub(super) async fn full_socket_never_loses_a_critical_event(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let stalled = p.socket_with_limits(&owner, "stalled: its queue is full", stalled_limits());
    p.add_or_fail(stalled, &owner).await?;
    p.fill(stalled);
    let (nonce, data) = p.message();
    let result = p.emit(&owner, "agent_thinking", data).await;
    if let Err(error) = &result {
        return Err(fail(
            "emit_critical_event",
            format!(
                "Ok for user `{owner}`, who has a connection: the event is retained whatever its socket can take"
            ),
            format!("Err({error})"),
            "retain the event (websocket_manager::CriticalEventLog::emit), then push it",
        ));
    }
    let took_it = p.received(stalled, &nonce, false).await > 0;
    if took_it || p.closed(stalled).await {
        return Ok(());
    }
    Err(fail(
        "emit_critical_event",
        "the socket whose queue was full closed (its client reconnects and resumes from its offset), since it could not take the event",
        format!(
            "the socket is still open and never got the event ({}): its client has a silent gap",
            delivery_text(&result)
        ),
        "when a socket cannot take a critical event, close it as a slow consumer instead of skipping it (websocket_manager::CriticalEventLog::emit does)",
    ))
}

pub(super) async fn health_counts(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let thread = p.scope.thread_id();
    let a = p.connect(&owner, "a").await?;
    let b = p.connect(&owner, "b").await?;
    p.bind(b, &thread).await?;
    let expected: HashSet<ConnectionId> = [p.id(a).clone(), p.id(b).clone()].into();
    let health = p.manager.get_connection_health(&owner);
    let listed: HashSet<ConnectionId> = health
        .connections
        .iter()
        .map(|c| c.connection_id.clone())
        .collect();
    if health.user_id != owner
        || health.total_connections != 2
        || health.active_connections != 2
        || listed != expected
    {
        return Err(fail(
            "get_connection_health",
            format!(
                "user `{owner}` with total_connections = 2, active_connections = 2 and a summary of each"
            ),
            format!(
                "user `{}` with total_connections = {}, active_connections = {}, summaries {:?}",
                health.user_id, health.total_connections, health.active_connections, listed
            ),
            "count the user's registered connections (and the open ones) from the user index",
        ));
    }
    let thread_shown = health
        .connections
        .iter()
        .find(|c| &c.connection_id == p.id(b))
        .and_then(|c| c.thread_id.clone());
    if thread_shown.as_ref() != Some(&thread) {
        return Err(fail(
            "get_connection_health",
            format!("the summary of `{}` to show thread `{thread}`", p.id(b)),
            format!("{thread_shown:?}"),
            "fill each summary from the connection record, thread included",
        ));
    }
    // Message counters are not probed: the contract fixes what connections a
    // user has, while counters are each manager's own bookkeeping.
    let removed = p.id(a).clone();
    p.disconnect(a).await?;
    let health = p.manager.get_connection_health(&owner);
    if health.total_connections != 1
        || health
            .connections
            .iter()
            .any(|c| c.connection_id == removed)
    {
        if p.manager.get_user_connections(&owner).contains(&removed) {
            // Health answered from the user index, which the removal left as
            // it was (removal_clears_lookups says so too).
            return Err(fail(
                "remove_connection",
                format!("`{removed}` gone from the user's connections after its removal"),
                "get_user_connections and get_connection_health still list it",
                "remove the connection from every index in remove_connection",
            ));
        }
        return Err(fail(
            "get_connection_health",
            format!("total_connections = 1 and no summary of `{removed}` after removing it"),
            format!(
                "total_connections = {}, {} summaries",
                health.total_connections,
                health.connections.len()
            ),
            "compute health from the live indexes, not from a stale copy",
        ));
    }
    Ok(())
}

fn refused_for_isolation(result: &Result<Delivery, ManagerError>) -> bool {
    matches!(result, Err(ManagerError::IsolationViolation { .. }))
}

pub(super) async fn isolation_refuses_connections(p: &mut Probe<'_>) -> Step {
    let stranger = p.scope.other().clone();
    let index = p.socket(&stranger, "another user");
    let result = p.add(p.connection(index)).await;
    if !matches!(result, Err(ManagerError::IsolationViolation { .. })) {
        return Err(fail(
            "add_connection",
            format!(
                "Err(IsolationViolation) for a connection of user `{stranger}`, who is not this isolated manager's user"
            ),
            match result {
                Ok(()) => "Ok(()): the connection was accepted".to_owned(),
                Err(error) => format!("Err({error})"),
            },
            "compare connection.user_id with the manager's UserContext and refuse any other user with ManagerError::IsolationViolation",
        ));
    }
    let users = p.manager.get_user_connections(&stranger);
    if !users.is_empty() || p.manager.is_connection_active(&stranger) {
        // The refusal itself was right; what remains of the connection was
        // written by add_connection before it refused.
        return Err(fail(
            "add_connection",
            format!("nothing about user `{stranger}` after refusing their connection"),
            format!(
                "get_user_connections = {users:?}, is_connection_active = {}",
                p.manager.is_connection_active(&stranger)
            ),
            "check the user before writing to any index: keep no trace of a refused connection",
        ));
    }
    Ok(())
}

pub(super) async fn isolation_refuses_sends(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let stranger = p.scope.other().clone();
    let own = p.connect(&owner, "the manager's user").await?;
    let (nonce, message) = p.message();
    let result = p.send_to_user(&stranger, message).await;
    if !refused_for_isolation(&result) {
        return Err(fail(
            "send_to_user",
            format!(
                "Err(IsolationViolation) for user `{stranger}`, who is not this isolated manager's user"
            ),
            delivery_text(&result),
            "check the target user against the manager's UserContext before anything else",
        ));
    }
    let (critical_nonce, data) = p.message();
    let result = p.emit(&stranger, "agent_started", data).await;
    if !refused_for_isolation(&result) {
        return Err(fail(
            "emit_critical_event",
            format!(
                "Err(IsolationViolation) for user `{stranger}`, who is not this isolated manager's user"
            ),
            delivery_text(&result),
            "check the target user against the manager's UserContext before delivering or queueing",
        ));
    }
    for (method, nonce) in [
        ("send_to_user", &nonce),
        ("emit_critical_event", &critical_nonce),
    ] {
        let leaked = p.received(own, nonce, false).await;
        if leaked > 0 {
            return Err(fail(
                method,
                "no frame on the manager's own user's socket for a message addressed to another user",
                format!("{leaked} frame(s) arrived"),
                "never deliver a message addressed to another user",
            ));
        }
    }
    Ok(())
}

pub(super) async fn queries_are_scoped_to_the_user(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let absent = p.scope.user_id();
    let connected = p.connect(&owner, "the only connected user").await?;
    let fix =
        "answer from the queried user's own entry in the user index; never from all connections";
    let users = p.manager.get_user_connections(&absent);
    if !users.is_empty() {
        return Err(fail(
            "get_user_connections",
            format!(
                "an empty set for user `{absent}`, who has no connection, while `{owner}` is connected"
            ),
            format!("{users:?}"),
            fix,
        ));
    }
    if p.manager.is_connection_active(&absent) {
        return Err(fail(
            "is_connection_active",
            format!(
                "false for user `{absent}`, who has no connection, while `{owner}` is connected"
            ),
            "true",
            fix,
        ));
    }
    let health = p.manager.get_connection_health(&absent);
    let leaked = health
        .connections
        .iter()
        .any(|c| &c.connection_id == p.id(connected));
    if health.total_connections != 0 || leaked {
        return Err(fail(
            "get_connection_health",
            format!("no connection for user `{absent}` while only `{owner}` is connected"),
            format!(
                "total_connections = {}, {} summaries",
                health.total_connections,
                health.connections.len()
            ),
            fix,
        ));
    }
    Ok(())
}

pub(super) async fn offline_critical_event_is_replayed(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let (nonce, data) = p.message();
    let result = p.emit(&owner, "agent_completed", data).await;
    if result.is_err() {
        return Err(fail(
            "emit_critical_event",
            format!("Ok(Queued) for user `{owner}`, who has no connection yet"),
            delivery_text(&result),
            "retain critical events for a user with no connection (see websocket_manager::CriticalEventLog) and answer Ok(Delivery::queued(..))",
        ));
    }
    // What the manager says it kept, read before a connection can take it.
    let kept = p.manager.get_connection_health(&owner);
    let tab = p.connect(&owner, "the user's next connection").await?;
    let arrived = p.received(tab, &nonce, true).await;
    if arrived == 1 {
        return Ok(());
    }
    if arrived == 0 && kept.pending_critical_events == 0 && kept.retained_critical_events == 0 {
        return Err(fail(
            "emit_critical_event",
            format!(
                "the event kept for user `{owner}`, who had no connection: counted in get_connection_health's pending_critical_events, and replayed on the next connection"
            ),
            format!(
                "it answered {} but kept nothing: health showed 0 pending and 0 retained events, and the next connection got nothing",
                delivery_text(&result)
            ),
            "retain the event before answering Ok(Queued) (websocket_manager::CriticalEventLog::emit does), or answer Err; and count what you keep in pending_critical_events",
        ));
    }
    Err(fail(
        "add_connection",
        "the critical event emitted while the user was offline, once, on the user's next connection",
        format!(
            "it arrived {arrived} times; emit_critical_event answered {} and health showed {} pending, {} retained event(s) before the connection",
            delivery_text(&result),
            kept.pending_critical_events,
            kept.retained_critical_events
        ),
        "replay the retained events no connection took into the new socket in add_connection, once each, before publishing it (websocket_manager::CriticalEventLog::attach)",
    ))
}

/// The critical event carrying `nonce` among `frames`, parsed.
fn find_envelope(frames: &[serde_json::Value], nonce: &str) -> Option<CriticalEnvelope> {
    frames
        .iter()
        .find(|f| f.get("data").is_some_and(|d| d.to_string().contains(nonce)))
        .and_then(|f| serde_json::from_value(f.clone()).ok())
}

pub(super) async fn critical_envelope(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let tab = p.connect(&owner, "a").await?;
    let mut seen: Vec<(CriticalEnvelope, Option<StreamOffset>)> = Vec::new();
    for event_type in ["agent_started", "agent_completed"] {
        let (nonce, data) = p.message();
        let result = p.emit(&owner, event_type, data.clone()).await;
        let frames = p.frames(tab, true).await;
        let Some(envelope) = find_envelope(&frames, &nonce) else {
            return Err(fail(
                "emit_critical_event",
                r#"one frame {"type","data","timestamp","critical":true,"stream","sequence"} carrying the caller's data"#,
                format!("{frames:?}"),
                "wrap every critical event in websocket_manager::CriticalEnvelope (or use websocket_manager::CriticalEventLog)",
            ));
        };
        if envelope.event_type != event_type || envelope.data != data || !envelope.critical {
            return Err(fail(
                "emit_critical_event",
                format!("type `{event_type}`, the caller's data untouched, critical: true"),
                format!(
                    "type `{}`, data {}, critical: {}",
                    envelope.event_type, envelope.data, envelope.critical
                ),
                "fill the envelope from the arguments as given",
            ));
        }
        let reported = result.as_ref().ok().and_then(Delivery::offset);
        seen.push((envelope, reported));
    }
    let (first, second) = (&seen[0], &seen[1]);
    if second.0.stream != first.0.stream || second.0.sequence != first.0.sequence + 1 {
        return Err(fail(
            "emit_critical_event",
            format!(
                "the second event at stream {} sequence {}",
                first.0.stream,
                first.0.sequence + 1
            ),
            format!("stream {} sequence {}", second.0.stream, second.0.sequence),
            "number a user's critical events 1, 2, 3... within one stream",
        ));
    }
    for (envelope, reported) in &seen {
        let actual = StreamOffset::new(envelope.stream, envelope.sequence);
        if *reported != Some(actual) {
            return Err(fail(
                "emit_critical_event",
                format!("a Delivery reporting offset {actual}, the one the client received"),
                format!("{reported:?}"),
                "return the assigned offset: Delivery::delivered(..).with_offset(offset)",
            ));
        }
    }
    Ok(())
}

pub(super) async fn resume_from_offset(p: &mut Probe<'_>) -> Step {
    let owner = p.scope.owner().clone();
    let first_tab = p.connect(&owner, "before the drop").await?;
    let mut nonces = Vec::new();
    for _ in 0..2 {
        let (nonce, data) = p.message();
        if let Err(error) = p.emit(&owner, "agent_thinking", data).await {
            return Err(fail(
                "emit_critical_event",
                "Ok for a connected user",
                format!("Err({error})"),
                "deliver to the user's connections and retain the event",
            ));
        }
        nonces.push(nonce);
    }
    let texts = p.frame_texts(first_tab, true).await;
    let frames: Vec<serde_json::Value> = texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap_or_default())
        .collect();
    let first_print = texts
        .iter()
        .find(|text| text.contains(nonces[0].as_str()))
        .map(|text| EventPrint::of(text));
    let Some(first) = find_envelope(&frames, &nonces[0]) else {
        return Err(fail(
            "emit_critical_event",
            "the first event on the connected socket, in its envelope",
            format!("{frames:?}"),
            "wrap every critical event in websocket_manager::CriticalEnvelope and deliver it",
        ));
    };
    p.disconnect(first_tab).await?;
    let (missed_nonce, data) = p.message();
    let missed = p.emit(&owner, "agent_completed", data).await;
    let kept = p.manager.get_connection_health(&owner);
    let offset = StreamOffset::new(first.stream, first.sequence);
    // With the print of the event there, as the JavaScript client sends.
    let resumed = p
        .connect_with(&owner, "resumed after the first event", |connection| {
            connection.resume = Some(offset);
            connection.resume_print = first_print;
        })
        .await?;
    let frames = p.frames(resumed, true).await;
    let carried: Vec<usize> = [&nonces[0], &nonces[1], &missed_nonce]
        .iter()
        .map(|nonce| {
            frames
                .iter()
                .filter(|f| f.to_string().contains(nonce.as_str()))
                .count()
        })
        .collect();
    if carried[2] == 0 && kept.pending_critical_events == 0 {
        // Like the offline check: an event nothing counts as pending was
        // never kept, whatever emit_critical_event answered.
        return Err(fail(
            "emit_critical_event",
            format!(
                "the event emitted while user `{owner}` had no connection kept (counted in pending_critical_events) and replayed on resume"
            ),
            format!(
                "it answered {} but health showed 0 pending events, and the resumed connection did not get it",
                delivery_text(&missed)
            ),
            "retain the event before answering Ok(Queued) (websocket_manager::CriticalEventLog::emit does), or answer Err",
        ));
    }
    if carried != [0, 1, 1] || frames.iter().any(|f| f["type"] == "resync") {
        return Err(fail(
            "add_connection",
            format!(
                "resuming from {offset}: the second event and the one emitted while offline, once each, nothing before the offset, no resync notice"
            ),
            format!("first/second/offline event received {carried:?} times; frames: {frames:?}"),
            "replay the retained events after `connection.resume` into the new socket (see websocket_manager::CriticalEventLog)",
        ));
    }
    // The same offset with the print of another event: the client saw
    // something else there.
    let other = p
        .connect_with(&owner, "resumed with another event's print", |connection| {
            connection.resume = Some(offset);
            connection.resume_print = Some(EventPrint::of("another event"));
        })
        .await?;
    let frames = p.frames(other, true).await;
    if !frames
        .first()
        .is_some_and(|f| f["type"] == "resync" && f["reason"] == "unknown_stream")
    {
        return Err(fail(
            "add_connection",
            format!(
                "a resync notice with reason `unknown_stream` first, for offset {offset} with the print of another event than the one there"
            ),
            format!("{frames:?}"),
            "compare `connection.resume_print` with the print of the event held at the offset (see websocket_manager::CriticalEventLog)",
        ));
    }
    let unknown = StreamOffset::new(first.stream.wrapping_add(0x5eed), 1);
    let stale = p
        .connect_resuming(&owner, "resumed from an unknown stream", Some(unknown))
        .await?;
    let frames = p.frames(stale, true).await;
    let told = frames
        .first()
        .is_some_and(|f| f["type"] == "resync" && f["reason"] == "unknown_stream");
    if !told {
        return Err(fail(
            "add_connection",
            format!(
                "a resync notice with reason `unknown_stream` first, for an offset on stream {} that the user never had",
                unknown.stream
            ),
            format!("{frames:?}"),
            "when an offset cannot be honoured, send websocket_manager::ResyncNotice first (see websocket_manager::CriticalEventLog)",
        ));
    }
    Ok(())
}
