//! What the workspace's tests and benches share, in one unpublished crate:
//!
//! * [`redis`]: a real `redis-server` for the cluster tests (the run's, or
//!   one of the test's own);
//! * [`cluster`]: a real Redis Cluster (three masters, three replicas);
//! * [`fault_proxy`]: a real TCP proxy that black-holes or cuts connections;
//! * [`e2e`]: a real server on loopback (both adapters), tokens and a
//!   tokio-tungstenite client;
//! * [`bench`](mod@bench): the transport benches' authenticator, token and upgrade
//!   request.
//!
//! The runtime crate's own tests keep their fixtures next to them
//! (`runtime/tests/common`, `runtime/tests/support`): one of them registers
//! a deliberately broken manager through `inventory`, which must not reach
//! every binary that links this crate.

pub mod bench;
pub mod cluster;
pub mod e2e;
pub mod fault_proxy;
pub mod redis;
pub mod sentinel;
pub mod tab;
