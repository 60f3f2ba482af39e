//! The linkage rule, proven: this test binary has `example-managers` as a
//! dependency but never references it, so the linker drops the crate and its
//! registrations with it. A binary that needs them writes
//! `use example_managers as _;` (see `registration_cross_crate.rs`).
#![allow(clippy::unwrap_used)]

use websocket_manager::startup::{Registry, RegistryError};

#[test]
fn unreferenced_crate_registers_nothing() {
    let registry = Registry::global();
    assert!(
        registry
            .entries()
            .iter()
            .all(|r| r.module_path != "example_managers")
    );
    assert!(matches!(
        registry.get("minimal"),
        Err(RegistryError::UnknownName { .. })
    ));
}
