//! Managers defined in another crate appear in the registry once that crate
//! is referenced. CI runs this test in debug and in `--release`.
#![allow(clippy::unwrap_used)]

use websocket_manager::DynManager;

use example_managers as _;
use websocket_manager::{
    UserId, WebSocketConnection, WebSocketHandle, WebSocketManager,
    managers::ManagerConfig,
    socket::QueueLimits,
    startup::{BuildContext, Extensions, ManagerMode, Registry},
};

#[test]
fn manager_from_another_crate_is_registered_with_its_origin() {
    let registry = Registry::global();
    let registration = registry.get("minimal").unwrap();
    assert_eq!(registration.type_name, "MinimalManager");
    assert_eq!(registration.module_path, "example_managers");
    assert!(
        registration.file.ends_with("src/lib.rs"),
        "{}",
        registration.file
    );
    assert_eq!(registration.mode, ManagerMode::Unified);
    assert!(registration.matches_protocol());
    assert!(registration.is_buildable());
}

#[tokio::test]
async fn manager_from_another_crate_is_built_and_works() {
    let registry = Registry::global();
    let config = ManagerConfig::default();
    let extensions = Extensions::new();
    let manager: DynManager = registry
        .get("minimal")
        .unwrap()
        .build(&BuildContext::new(&config, &extensions))
        .unwrap();
    let (socket, _receiver) = WebSocketHandle::channel(QueueLimits::default());
    let connection = WebSocketConnection::new(UserId::new("alice").unwrap(), socket.clone());
    let id = connection.connection_id.clone();
    manager.add_connection(connection).await.unwrap();
    assert_eq!(manager.get_connection_id_by_websocket(&socket), Some(id));
}

#[test]
fn registry_is_sorted_and_names_are_unique() {
    let registry = Registry::global();
    let names: Vec<_> = registry.entries().iter().map(|r| r.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    registry.validate_unique().unwrap();
}
