//! Who a manager works for: [`UserContext`] and [`ManagerMode`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{ThreadId, UserId};

/// The request-scoped identity an isolated manager is built for.
///
/// ```
/// use websocket_manager::{ThreadId, UserId, startup::UserContext};
/// let context = UserContext::new(UserId::new("alice")?)
///     .with_thread(ThreadId::new("t-1")?)
///     .with_run_id("run-7");
/// assert_eq!(context.user_id.as_str(), "alice");
/// assert_eq!(context.run_id.as_deref(), Some("run-7"));
/// # Ok::<(), websocket_manager::IdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserContext {
    /// The user every connection and message of the manager must belong to.
    pub user_id: UserId,
    /// The thread the request works on, if any.
    pub thread_id: Option<ThreadId>,
    /// The agent run, if any.
    pub run_id: Option<String>,
    /// The request that created the context, for log correlation.
    pub request_id: Option<String>,
}

impl UserContext {
    /// A context for `user_id` with no thread, run or request id.
    pub fn new(user_id: UserId) -> Self {
        UserContext {
            user_id,
            thread_id: None,
            run_id: None,
            request_id: None,
        }
    }

    /// Sets the thread.
    pub fn with_thread(mut self, thread_id: ThreadId) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Sets the run id.
    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// How a manager is shared.
///
/// ```
/// use websocket_manager::startup::ManagerMode;
/// assert_eq!("isolated".parse::<ManagerMode>(), Ok(ManagerMode::Isolated));
/// assert_eq!(ManagerMode::Unified.to_string(), "unified");
/// assert!("shared".parse::<ManagerMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerMode {
    /// One instance shared by every user of a server.
    Unified,
    /// One instance per [`UserContext`], refusing every other user.
    Isolated,
}

impl ManagerMode {
    /// The lowercase name used in attributes, reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerMode::Unified => "unified",
            ManagerMode::Isolated => "isolated",
        }
    }
}

impl fmt::Display for ManagerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not `"unified"` or `"isolated"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown manager mode `{0}`: expected `unified` or `isolated`")]
pub struct UnknownMode(pub String);

impl FromStr for ManagerMode {
    type Err = UnknownMode;
    fn from_str(value: &str) -> Result<Self, UnknownMode> {
        match value {
            "unified" => Ok(ManagerMode::Unified),
            "isolated" => Ok(ManagerMode::Isolated),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}
