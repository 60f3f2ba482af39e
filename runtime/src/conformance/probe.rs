//! The state of one check: the probed manager, the synthetic identities,
//! and the sockets the check created, all removed by [`Probe::cleanup`].

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use super::{CheckFailure, ProbeScope};
use crate::connection::{
    CloseReason, OutboundEvent, OutboundReceiver, QueueLimits, SendError, TextFrame,
    WebSocketConnection, WebSocketHandle,
};
use crate::context::ManagerMode;
use crate::delivery::Delivery;
use crate::dyn_manager::DynManager;
use crate::error::ManagerError;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::offset::StreamOffset;
use crate::protocol::WebSocketManager;

/// One socket created for a probe.
pub(super) struct ProbeSocket {
    pub(super) connection_id: ConnectionId,
    pub(super) user_id: UserId,
    pub(super) handle: WebSocketHandle,
    pub(super) receiver: OutboundReceiver,
    pub(super) label: String,
}

/// The state of one check: the manager, the identities, and the sockets the
/// check created (all removed and closed by [`Probe::cleanup`]).
pub(super) struct Probe<'a> {
    pub(super) manager: &'a DynManager,
    pub(super) scope: &'a ProbeScope,
    pub(super) mode: ManagerMode,
    pub(super) wait: Duration,
    pub(super) sockets: Vec<ProbeSocket>,
    /// The async contract method being awaited, if any: a check that times
    /// out names it.
    pub(super) in_flight: Option<&'static str>,
}

pub(super) type Step = Result<(), CheckFailure>;

pub(super) fn fail(
    method: &str,
    expected: impl Into<String>,
    got: impl Into<String>,
    fix: impl Into<String>,
) -> CheckFailure {
    // The check name is filled in by `run_check`.
    CheckFailure::new("", method, expected, got, fix)
}

/// The failure of an `add_connection` that refused a fresh connection.
fn refused(user_id: &UserId, error: &ManagerError) -> CheckFailure {
    fail(
        "add_connection",
        format!("Ok(()) for a new connection of user `{user_id}` with a fresh id and socket"),
        format!("Err({error})"),
        "accept any connection whose id and socket are not registered yet",
    )
}

pub(super) fn delivery_text(result: &Result<Delivery, ManagerError>) -> String {
    match result {
        Ok(delivery) => format!("Ok({delivery:?})"),
        Err(error) => format!("Err({error})"),
    }
}

impl<'a> Probe<'a> {
    pub(super) fn new(
        manager: &'a DynManager,
        scope: &'a ProbeScope,
        mode: ManagerMode,
        wait: Duration,
    ) -> Self {
        Probe {
            manager,
            scope,
            mode,
            wait,
            sockets: Vec::new(),
            in_flight: None,
        }
    }

    /// Awaits `call`, a call of the async contract method `method`,
    /// remembering which method it is while it runs.
    pub(super) async fn call<T>(
        &mut self,
        method: &'static str,
        call: impl Future<Output = T>,
    ) -> T {
        self.in_flight = Some(method);
        let output = call.await;
        self.in_flight = None;
        output
    }

    /// `add_connection`, remembered while it runs.
    pub(super) async fn add(
        &mut self,
        connection: WebSocketConnection,
    ) -> Result<(), ManagerError> {
        let manager = self.manager;
        self.call("add_connection", manager.add_connection(connection))
            .await
    }

    /// `remove_connection`, remembered while it runs.
    pub(super) async fn remove(
        &mut self,
        connection_id: &ConnectionId,
    ) -> Option<WebSocketConnection> {
        let manager = self.manager;
        self.call(
            "remove_connection",
            manager.remove_connection(connection_id),
        )
        .await
    }

    /// `send_to_user`, remembered while it runs.
    pub(super) async fn send_to_user(
        &mut self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let manager = self.manager;
        self.call("send_to_user", manager.send_to_user(user_id, message))
            .await
    }

    /// `send_to_thread`, remembered while it runs.
    pub(super) async fn send_to_thread(
        &mut self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let manager = self.manager;
        self.call("send_to_thread", manager.send_to_thread(thread_id, message))
            .await
    }

    /// `emit_critical_event`, remembered while it runs.
    pub(super) async fn emit(
        &mut self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let manager = self.manager;
        self.call(
            "emit_critical_event",
            manager.emit_critical_event(user_id, event_type, data),
        )
        .await
    }

    /// A new socket for `user_id`, not yet added.
    pub(super) fn socket(&mut self, user_id: &UserId, label: &str) -> usize {
        self.socket_with_limits(user_id, label, QueueLimits::new(64, 1 << 20))
    }

    /// A new socket for `user_id` whose queue has `limits`, not yet added.
    pub(super) fn socket_with_limits(
        &mut self,
        user_id: &UserId,
        label: &str,
        limits: QueueLimits,
    ) -> usize {
        let (handle, receiver) = WebSocketHandle::channel(limits);
        self.sockets.push(ProbeSocket {
            connection_id: self.scope.connection_id(),
            user_id: user_id.clone(),
            handle,
            receiver,
            label: label.to_owned(),
        });
        self.sockets.len() - 1
    }

    pub(super) fn connection(&self, index: usize) -> WebSocketConnection {
        let socket = &self.sockets[index];
        WebSocketConnection::with_id(
            socket.connection_id.clone(),
            socket.user_id.clone(),
            socket.handle.clone(),
        )
    }

    pub(super) fn id(&self, index: usize) -> &ConnectionId {
        &self.sockets[index].connection_id
    }

    /// Creates a socket for `user_id` and adds it; a refusal is a failure.
    pub(super) async fn connect(
        &mut self,
        user_id: &UserId,
        label: &str,
    ) -> Result<usize, CheckFailure> {
        self.connect_resuming(user_id, label, None).await
    }

    /// Like [`connect`](Self::connect), resuming from `resume`.
    pub(super) async fn connect_resuming(
        &mut self,
        user_id: &UserId,
        label: &str,
        resume: Option<StreamOffset>,
    ) -> Result<usize, CheckFailure> {
        self.connect_with(user_id, label, |connection| connection.resume = resume)
            .await
    }

    /// Like [`connect`](Self::connect), with `adjust` applied to the
    /// connection before it is added (a thread, a resume offset).
    pub(super) async fn connect_with(
        &mut self,
        user_id: &UserId,
        label: &str,
        adjust: impl FnOnce(&mut WebSocketConnection),
    ) -> Result<usize, CheckFailure> {
        let index = self.socket(user_id, label);
        let mut connection = self.connection(index);
        adjust(&mut connection);
        match self.add(connection).await {
            Ok(()) => Ok(index),
            Err(error) => Err(refused(user_id, &error)),
        }
    }

    /// Adds the connection of socket `index`; a refusal is a failure.
    pub(super) async fn add_or_fail(&mut self, index: usize, user_id: &UserId) -> Step {
        match self.add(self.connection(index)).await {
            Ok(()) => Ok(()),
            Err(error) => Err(refused(user_id, &error)),
        }
    }

    pub(super) async fn bind(&mut self, index: usize, thread: &ThreadId) -> Step {
        if self
            .manager
            .update_connection_thread(self.id(index), thread.clone())
        {
            Ok(())
        } else {
            Err(fail(
                "update_connection_thread",
                format!("true for registered connection `{}`", self.id(index)),
                "false",
                "look the connection up by id and move it into the thread's set",
            ))
        }
    }

    /// Fills socket `index`'s queue, as a client that stopped reading would:
    /// every later frame finds it full. Returns whether it is full.
    pub(super) fn fill(&mut self, index: usize) -> bool {
        let handle = &self.sockets[index].handle;
        let filler = TextFrame::from_string(r#"{"type":"__wsm_probe_filler"}"#.to_owned());
        for _ in 0..=handle.limits().max_messages {
            if let Err(error) = handle.try_send(filler.clone()) {
                return error == SendError::Full;
            }
        }
        false
    }

    pub(super) fn message(&self) -> (String, serde_json::Value) {
        let nonce = self.scope.next("msg");
        let message = serde_json::json!({ "type": "__wsm_probe", "nonce": nonce });
        (nonce, message)
    }

    /// How many frames carrying `nonce` socket `index` received. Waits up to
    /// the delivery wait for the first one when `expect` is set; otherwise
    /// only takes what is already queued.
    pub(super) async fn received(&mut self, index: usize, nonce: &str, expect: bool) -> usize {
        let wait = if expect { self.wait } else { Duration::ZERO };
        let receiver = &mut self.sockets[index].receiver;
        let mut count = 0;
        loop {
            let wait_now = if count == 0 { wait } else { Duration::ZERO };
            match next_event(receiver, wait_now).await {
                Some(OutboundEvent::Frame(frame)) => {
                    if frame.as_str().contains(nonce) {
                        count += 1;
                    }
                }
                // A manager sends no binary message: nothing to count.
                Some(OutboundEvent::Binary(_)) => {}
                Some(OutboundEvent::Close(_)) | None => return count,
            }
        }
    }

    /// Every JSON frame socket `index` received, in order. Waits up to the
    /// delivery wait for the first one when `expect` is set. A frame that is
    /// not JSON is returned as a JSON string.
    pub(super) async fn frames(&mut self, index: usize, expect: bool) -> Vec<serde_json::Value> {
        self.frame_texts(index, expect)
            .await
            .into_iter()
            .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
            .collect()
    }

    /// Like [`frames`](Self::frames), each frame's text as the manager
    /// queued it (what a client computes an event's print from).
    pub(super) async fn frame_texts(&mut self, index: usize, expect: bool) -> Vec<String> {
        let wait = if expect { self.wait } else { Duration::ZERO };
        let receiver = &mut self.sockets[index].receiver;
        let mut frames = Vec::new();
        loop {
            let wait_now = if frames.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            match next_event(receiver, wait_now).await {
                Some(OutboundEvent::Frame(frame)) => frames.push(frame.as_str().to_owned()),
                Some(OutboundEvent::Binary(_)) => {}
                Some(OutboundEvent::Close(_)) | None => return frames,
            }
        }
    }

    /// Removes connection `index` from the manager; a failure when it
    /// answers `None`.
    pub(super) async fn disconnect(&mut self, index: usize) -> Step {
        let id = self.id(index).clone();
        match self.remove(&id).await {
            Some(_) => Ok(()),
            None => Err(fail(
                "remove_connection",
                format!("Some(connection `{id}`) for a registered connection"),
                "None",
                "remove the connection from every index and return it",
            )),
        }
    }

    /// Which of `expected` and `others` got the frame: returns a failure
    /// naming `method` when an expected socket got nothing or another did.
    pub(super) async fn expect_delivery(
        &mut self,
        method: &str,
        nonce: &str,
        expected: &[usize],
        others: &[usize],
    ) -> Result<usize, CheckFailure> {
        let mut got = 0;
        for &index in expected {
            let n = self.received(index, nonce, true).await;
            if n == 0 {
                return Err(fail(
                    method,
                    format!("the frame on probe socket `{}`", self.sockets[index].label),
                    "nothing arrived on it",
                    "push the frame into the queue of every targeted connection (`websocket.try_send`)",
                ));
            }
            if n > 1 {
                return Err(fail(
                    method,
                    format!(
                        "the frame once on probe socket `{}`",
                        self.sockets[index].label
                    ),
                    format!("it arrived {n} times"),
                    "send each frame once per connection",
                ));
            }
            got += 1;
        }
        for &index in others {
            if self.received(index, nonce, false).await > 0 {
                return Err(fail(
                    method,
                    "the frame nowhere else",
                    format!(
                        "it also arrived on probe socket `{}`",
                        self.sockets[index].label
                    ),
                    match method {
                        "send_to_thread" => {
                            "route by the thread index: reach exactly the connections bound to the thread, never all of a user's sockets, and never treat the thread id as a user id"
                        }
                        _ => "route by the user index: reach exactly that user's connections",
                    },
                ));
            }
        }
        Ok(got)
    }

    /// Whether socket `index` was closed, waiting up to the delivery wait
    /// for a close the manager makes on another task. Frames queued before
    /// the close are consumed.
    pub(super) async fn closed(&mut self, index: usize) -> bool {
        let wait = self.wait;
        let socket = &mut self.sockets[index];
        if socket.handle.is_closed() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_event(&mut socket.receiver, left).await {
                Some(OutboundEvent::Close(_)) => return true,
                Some(OutboundEvent::Frame(_) | OutboundEvent::Binary(_)) => {}
                None => return socket.handle.is_closed(),
            }
        }
    }

    pub(super) async fn cleanup(&mut self) {
        for socket in self.sockets.drain(..) {
            // Unconditional: an unknown id answers `None`, and a manager that
            // wrongly accepted a connection must not keep it.
            let _ = self.manager.remove_connection(&socket.connection_id).await;
            socket.handle.close(CloseReason::normal());
        }
    }
}

/// The next event of `receiver`, waiting at most `wait` (zero: only what is
/// already queued, without touching the timer).
async fn next_event(receiver: &mut OutboundReceiver, wait: Duration) -> Option<OutboundEvent> {
    if wait.is_zero() {
        // Unconstrained: tokio's cooperative budget must not turn a frame
        // that is already queued into a false "nothing arrived".
        let mut next = pin!(tokio::task::unconstrained(receiver.recv()));
        std::future::poll_fn(|cx| match next.as_mut().poll(cx) {
            Poll::Ready(event) => Poll::Ready(event),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    } else {
        tokio::time::timeout(wait, receiver.recv())
            .await
            .ok()
            .flatten()
    }
}
