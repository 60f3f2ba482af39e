//! [`HistoryReads`]: this node's reads of users' histories for registering
//! connections. At most `ClusterConfig::history_reads` are in flight; the
//! others wait their turn, up to `command_timeout`. And the resumes of one
//! user that wait at the same time share one read: after a node dies,
//! every tab of a user comes back within the same second, and each would
//! otherwise read the same stream from Redis.
//!
//! A registration may only use a read that Redis answers *after* the
//! registration began catching up (began buffering live events): an older
//! snapshot could miss an event published in between. So a registration
//! joins only a read that has not been sent yet (one still waiting for its
//! turn), and the read, when sent, starts at the lowest offset of everyone
//! who joined it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, watch};

use super::backplane::{Backplane, History};
use super::config::ClusterConfig;
use crate::error::ClusterFailure;
use crate::ids::UserId;
use crate::managers::history::next_stream;
use crate::offset::StreamOffset;

/// What a shared read hands every registration that joined it.
type Outcome = Option<Result<ReadHistory, ClusterFailure>>;

/// See the module docs.
#[derive(Debug)]
pub(super) struct HistoryReads {
    permits: Semaphore,
    /// Registrations that waited for a read's turn.
    waits: AtomicU64,
    /// Registrations that used a read another registration sent.
    shared: AtomicU64,
    /// Per user, the read waiting for its turn, which others may join.
    waiting: Mutex<HashMap<UserId, Waiting>>,
    /// Tells the reads in `waiting` apart (a user's next read after one was
    /// sent is a new entry).
    next_id: AtomicU64,
}

/// A read not sent yet.
#[derive(Debug)]
struct Waiting {
    id: u64,
    /// Where it starts: `None` (from what no connection took yet) or the
    /// lowest offset of its members, all in one stream.
    from: Option<StreamOffset>,
    outcome: watch::Receiver<Outcome>,
}

impl Waiting {
    /// Whether a registration resuming from `resume` may join: the same
    /// kind of start (both without an offset, or offsets in one stream).
    fn admits(&self, resume: Option<StreamOffset>) -> bool {
        match (self.from, resume) {
            (None, None) => true,
            (Some(from), Some(resume)) => from.stream == resume.stream,
            _ => false,
        }
    }
}

/// A read of a user's history, and the offset it started from (which is
/// lower than the registration's own when it shared another's read).
#[derive(Debug, Clone)]
pub(super) struct ReadHistory {
    pub history: Arc<History>,
    pub from: Option<StreamOffset>,
}

/// Removes a leader's entry from `waiting` however its read ends (sent,
/// refused, or the registration dropped): nobody may join it after.
struct Leading<'a> {
    reads: &'a HistoryReads,
    user: &'a UserId,
    id: u64,
}

impl Leading<'_> {
    /// Closes the read to newcomers; returns where it starts.
    fn close(&self) -> Option<Option<StreamOffset>> {
        let mut waiting = self.reads.lock();
        if waiting.get(self.user).is_some_and(|w| w.id == self.id) {
            return waiting.remove(self.user).map(|w| w.from);
        }
        None
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

enum Role {
    Leader(u64, watch::Sender<Outcome>),
    Member(watch::Receiver<Outcome>),
    Alone,
}

impl HistoryReads {
    /// At most `permits` reads in flight.
    pub fn new(permits: usize) -> Self {
        HistoryReads {
            permits: Semaphore::new(permits),
            waits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registrations that waited for a read's turn.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Registrations that used a read another registration sent.
    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads what a connection of `user` resuming from `resume` is owed,
    /// sharing a read of the same user that is still waiting for its turn.
    pub async fn read(
        &self,
        backplane: &Backplane,
        config: &ClusterConfig,
        user: &UserId,
        resume: Option<StreamOffset>,
    ) -> Result<ReadHistory, ClusterFailure> {
        // A turn free now: the read is sent at once, nobody could join it.
        if let Ok(permit) = self.permits.try_acquire() {
            return read_holding(permit, backplane, config, user, resume).await;
        }
        let role = {
            let mut waiting = self.lock();
            match waiting.get_mut(user) {
                Some(read) if read.admits(resume) => {
                    if let (Some(from), Some(resume)) = (read.from, resume) {
                        read.from = Some(from.min(resume));
                    }
                    Role::Member(read.outcome.clone())
                }
                Some(_) => Role::Alone,
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (sender, outcome) = watch::channel(None);
                    waiting.insert(
                        user.clone(),
                        Waiting {
                            id,
                            from: resume,
                            outcome,
                        },
                    );
                    Role::Leader(id, sender)
                }
            }
        };
        let (leading, sender) = match role {
            Role::Member(mut outcome) => {
                if let Ok(outcome) = outcome.wait_for(Option::is_some).await
                    && let Some(outcome) = outcome.clone()
                {
                    self.shared.fetch_add(1, Ordering::Relaxed);
                    return outcome;
                }
                // The leading registration went away before reading:
                // read alone.
                (None, None)
            }
            Role::Alone => (None, None),
            Role::Leader(id, sender) => (
                Some(Leading {
                    reads: self,
                    user,
                    id,
                }),
                Some(sender),
            ),
        };
        let result = self
            .read_in_turn(backplane, config, user, resume, leading.as_ref())
            .await;
        if let Some(sender) = sender {
            sender.send_replace(Some(result.clone()));
        }
        result
    }

    /// Reads alone (waiting for a turn): for a registration that may not
    /// use a shared read's answer.
    pub async fn read_alone(
        &self,
        backplane: &Backplane,
        config: &ClusterConfig,
        user: &UserId,
        resume: Option<StreamOffset>,
    ) -> Result<ReadHistory, ClusterFailure> {
        self.read_in_turn(backplane, config, user, resume, None)
            .await
    }

    /// Waits for a turn (up to `command_timeout`), then reads: from
    /// `resume`, or, leading a shared read, from the lowest offset of its
    /// members.
    async fn read_in_turn(
        &self,
        backplane: &Backplane,
        config: &ClusterConfig,
        user: &UserId,
        resume: Option<StreamOffset>,
        leading: Option<&Leading<'_>>,
    ) -> Result<ReadHistory, ClusterFailure> {
        let wait = config.command_timeout();
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(wait, self.permits.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    // Closed never happens (the semaphore is never closed);
                    // both are "busy".
                    Ok(Err(_)) | Err(_) => {
                        return Err(ClusterFailure::Busy {
                            waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        });
                    }
                }
            }
        };
        let from = leading.and_then(Leading::close).unwrap_or(resume);
        read_holding(permit, backplane, config, user, from).await
    }
}

/// Reads `user`'s history from `from`, holding a turn.
async fn read_holding(
    permit: tokio::sync::SemaphorePermit<'_>,
    backplane: &Backplane,
    config: &ClusterConfig,
    user: &UserId,
    from: Option<StreamOffset>,
) -> Result<ReadHistory, ClusterFailure> {
    let history = backplane
        .read_history(user, from, next_stream(), config.stream_meta_ttl())
        .await;
    drop(permit);
    Ok(ReadHistory {
        history: Arc::new(history?),
        from,
    })
}
