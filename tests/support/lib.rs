//! Shared helpers for the workspace's integration tests and examples.
