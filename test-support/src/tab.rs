//! [`ResumingTab`]: a browser tab as the manager-level tests see one: it
//! keeps the offset of the last critical event it processed (and that
//! event's print, as the JavaScript client does), resumes from it whenever
//! its connection ends, and checks that no offset ever names two different
//! events for it.

use std::collections::HashMap;
use std::time::Duration;

use websocket_manager::events::{EventPrint, ResumePoint, StreamOffset};
use websocket_manager::socket::{OutboundEvent, OutboundReceiver};
use websocket_manager::{UserId, WebSocketConnection, WebSocketHandle, WebSocketManager};

/// See the module docs.
#[derive(Debug)]
pub struct ResumingTab {
    user: UserId,
    outbound: Option<OutboundReceiver>,
    /// The offset of the last critical event processed.
    pub last: Option<StreamOffset>,
    /// The print of that event, sent with the offset unless
    /// [`without_prints`](Self::without_prints).
    pub last_print: Option<EventPrint>,
    prints: bool,
    /// Every critical event processed, in order, as (offset, data).
    pub seen: Vec<(StreamOffset, serde_json::Value)>,
    /// Every offset processed, with the event it named.
    pub named: HashMap<StreamOffset, serde_json::Value>,
    /// The `reason` of every `resync` notice received.
    pub notices: Vec<String>,
}

impl ResumingTab {
    /// A tab of `user`, not connected yet.
    pub fn new(user: UserId) -> Self {
        ResumingTab {
            user,
            outbound: None,
            last: None,
            last_print: None,
            prints: true,
            seen: Vec::new(),
            named: HashMap::new(),
            notices: Vec::new(),
        }
    }

    /// A tab that resumes with offsets only, as a client that keeps no
    /// print.
    pub fn without_prints(mut self) -> Self {
        self.prints = false;
        self
    }

    /// Connects to `manager`, resuming from the last offset; false when the
    /// manager refused.
    pub async fn connect(
        &mut self,
        manager: &impl WebSocketManager,
        limits: websocket_manager::socket::QueueLimits,
    ) -> bool {
        let (socket, outbound) = WebSocketHandle::channel(limits);
        let mut connection = WebSocketConnection::new(self.user.clone(), socket);
        if let Some(offset) = self.last {
            connection = connection.with_resume_point(ResumePoint {
                offset,
                print: self.last_print.filter(|_| self.prints),
            });
        }
        match manager.add_connection(connection).await {
            Ok(()) => {
                self.outbound = Some(outbound);
                true
            }
            Err(_) => false,
        }
    }

    /// Forgets the connection (as a tab that closed).
    pub fn disconnect(&mut self) {
        self.outbound = None;
    }

    /// Processes what arrives within `wait`; false when the connection
    /// ended (or there is none).
    ///
    /// # Panics
    ///
    /// When a frame is not JSON, or an offset names a second, different
    /// event.
    pub async fn read(&mut self, wait: Duration) -> bool {
        let Some(outbound) = &mut self.outbound else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, outbound.recv()).await {
                Ok(Some(OutboundEvent::Frame(frame))) => {
                    let value: serde_json::Value =
                        serde_json::from_str(frame.as_str()).expect("a JSON frame");
                    if value["type"] == "resync" {
                        self.notices
                            .push(value["reason"].as_str().unwrap_or_default().to_owned());
                        continue;
                    }
                    let offset = StreamOffset::new(
                        value["stream"].as_u64().unwrap_or_default(),
                        value["sequence"].as_u64().unwrap_or_default(),
                    );
                    let data = value["data"].clone();
                    if let Some(before) = self.named.insert(offset, data.clone()) {
                        assert_eq!(before, data, "offset {offset} named two different events");
                    }
                    self.seen.push((offset, data));
                    self.last = Some(offset);
                    self.last_print = Some(EventPrint::of(frame.as_str()));
                }
                Ok(Some(_) | None) => {
                    self.outbound = None;
                    return false;
                }
                Err(_) => return true,
            }
        }
    }
}
