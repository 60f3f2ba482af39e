//! The registry: sorting, duplicate names reported (never one silently
//! winning), unknown names listed, and its table and JSON forms.
#![allow(clippy::unwrap_used)]

use websocket_manager::{
    contract::PROTOCOL_FINGERPRINT,
    startup::{ManagerMode, Registration, Registry, RegistryError},
};

fn registration(name: &'static str, type_name: &'static str, line: u32) -> Registration {
    Registration::new(name, type_name, ManagerMode::Unified, None)
        .at("tests::registry", "tests/registry.rs", line)
        .with_fingerprint(PROTOCOL_FINGERPRINT)
}

#[test]
fn duplicated_name_is_an_error_listing_both() {
    let registry = Registry::from_entries([
        registration("b", "B", 1),
        registration("a", "First", 2),
        registration("a", "Second", 3),
    ]);
    let names: Vec<_> = registry.entries().iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "a", "b"]);
    let duplicates = registry.duplicate_names();
    assert_eq!(duplicates.len(), 1);
    assert_eq!(duplicates[0].name, "a");
    assert_eq!(duplicates[0].registrations.len(), 2);
    let error = registry.get("a").unwrap_err();
    assert!(matches!(error, RegistryError::DuplicateName(_)));
    let message = error.to_string();
    assert!(
        message.contains("First at tests/registry.rs:2"),
        "{message}"
    );
    assert!(
        message.contains("Second at tests/registry.rs:3"),
        "{message}"
    );
    assert!(registry.validate_unique().is_err());
    assert_eq!(registry.get("b").unwrap().type_name, "B");
}

#[test]
fn unknown_name_lists_the_registered_ones() {
    let registry =
        Registry::from_entries([registration("alpha", "A", 1), registration("beta", "B", 2)]);
    let error = registry.get("gamma").unwrap_err().to_string();
    assert_eq!(
        error,
        "no manager named `gamma` is registered (registered: alpha, beta)"
    );
}

#[test]
fn table_and_json_describe_the_same_entries() {
    let mut stale = registration("stale", "Stale", 9);
    stale.fingerprint ^= 1;
    let registry = Registry::from_entries([registration("alpha", "A", 1), stale]);
    let table = registry.to_string();
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[1].starts_with("alpha  "), "{table}");
    assert!(lines[1].contains("tests/registry.rs:1"), "{table}");
    assert!(lines[1].ends_with("no (factory = false)"), "{table}");
    // A report is printed with `println!`: it ends without a newline of its own.
    assert!(!table.ends_with('\n'), "{table:?}");
    let json = serde_json::to_value(&registry).unwrap();
    assert_eq!(json[0]["name"], "alpha");
    assert_eq!(json[0]["protocol_matches"], true);
    assert_eq!(json[1]["protocol_matches"], false);
    assert_eq!(json[0]["buildable"], false);
}

/// A manager of another crate does not tell its sockets' queue bounds: the
/// transport then uses its own setting or the default.
#[test]
fn a_manager_of_your_own_leaves_the_queue_bounds_to_the_transport() {
    let manager = websocket_manager::DynManager::new(example_managers::MinimalManager::default());
    assert_eq!(manager.queue_limits(), None);
}
