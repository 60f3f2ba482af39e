//! Shared helpers for the workspace's integration tests and examples.

pub mod fault_proxy;
pub mod redis;
