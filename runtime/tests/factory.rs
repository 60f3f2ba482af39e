//! The standard factory: choosing, building, sharing, refusing, and the
//! measured flags of `validate_manager_instance` and
//! `supports_user_isolation`.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use websocket_manager::DynManager;

use support::{Bug, registration};
use websocket_manager::conformance::Check;
use websocket_manager::{
    UserId, WebSocketConnection, WebSocketHandle, WebSocketManager,
    managers::ManagerConfig,
    socket::QueueLimits,
    startup::{
        BuildContext, BuildError, BuiltManager, Extensions, FactoryError, ManagerFactory,
        ManagerMode, Registry, RegistryError, StandardFactory, UserContext,
    },
};

fn user(name: &str) -> UserContext {
    UserContext::new(UserId::new(name).unwrap())
}

fn same(a: &DynManager, b: &DynManager) -> bool {
    a.ptr_eq(b)
}

fn factory_of(
    entries: impl IntoIterator<Item = websocket_manager::startup::Registration>,
) -> StandardFactory {
    StandardFactory::builder()
        .registry(Registry::from_entries(entries))
        .build()
}

fn good_pair() -> StandardFactory {
    factory_of([
        registration("unified", ManagerMode::Unified, Some(support::good_unified)),
        registration(
            "isolated",
            ManagerMode::Isolated,
            Some(support::good_isolated),
        ),
    ])
}

fn isolated_accepting_everyone(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    support::build(ManagerMode::Isolated, context, Some(Bug::AcceptsOtherUsers))
}

fn unified_inventing_connections(_: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    Ok(support::unified(Some(Bug::UpdateUnknownTrue)))
}

fn failing_constructor(_: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    Err(BuildError::Failed("database unreachable".into()))
}

/// An application resource: records what each constructor call was given.
#[derive(Default)]
struct Seen(Mutex<Vec<(usize, Option<String>)>>);

fn needs_resources(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    let seen = context.require_extension::<Arc<Seen>>()?;
    seen.0.lock().unwrap().push((
        context.config.queue_capacity(),
        context.user_context.map(|c| c.user_id.to_string()),
    ));
    support::build(ManagerMode::Isolated, context, None)
}

#[test]
fn unified_is_built_once_and_shared_by_everyone() {
    let factory = good_pair();
    let a = factory.create_manager(None, ManagerMode::Unified).unwrap();
    let b = factory
        .create_manager(Some(user("alice")), ManagerMode::Unified)
        .unwrap();
    let c = factory.create_named("unified", Some(user("bob"))).unwrap();
    assert!(same(&a, &b) && same(&b, &c));
}

#[tokio::test]
async fn isolated_is_built_per_user_context_and_serves_only_that_user() {
    let factory = good_pair();
    let alice = factory
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    let alice_again = factory
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    assert!(!same(&alice, &alice_again), "a new instance per context");
    let (socket, _rx) = WebSocketHandle::channel(QueueLimits::default());
    let bob_connection = WebSocketConnection::new(UserId::new("bob").unwrap(), socket);
    assert!(matches!(
        alice.add_connection(bob_connection).await,
        Err(websocket_manager::ManagerError::IsolationViolation { .. })
    ));
    let (socket, _rx) = WebSocketHandle::channel(QueueLimits::default());
    let alice_connection = WebSocketConnection::new(UserId::new("alice").unwrap(), socket);
    alice.add_connection(alice_connection).await.unwrap();
}

#[test]
fn isolated_without_a_user_context_is_refused_with_a_typed_error() {
    let factory = good_pair();
    let error = factory
        .create_manager(None, ManagerMode::Isolated)
        .err()
        .unwrap();
    assert!(
        matches!(error, FactoryError::MissingUserContext { name: "isolated" }),
        "{error}"
    );
    assert!(error.to_string().contains("Some(UserContext)"));

    // With the requirement off, the constructor decides (and this one refuses).
    let lenient = StandardFactory::builder()
        .registry(good_pair().registry().clone())
        .require_user_context(false)
        .build();
    let error = lenient
        .create_manager(None, ManagerMode::Isolated)
        .err()
        .unwrap();
    assert!(matches!(
        error,
        FactoryError::Build {
            name: "isolated",
            source: BuildError::MissingUserContext
        }
    ));
}

#[test]
fn unknown_names_and_modes_are_typed_errors() {
    let factory = good_pair();
    let error = factory.create_named("redis", None).err().unwrap();
    assert!(
        matches!(&error, FactoryError::Registry(RegistryError::UnknownName { name, known })
            if name == "redis" && *known == ["isolated", "unified"]),
        "{error}"
    );
    let only_unified = factory_of([registration(
        "unified",
        ManagerMode::Unified,
        Some(support::good_unified),
    )]);
    let error = only_unified
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .err()
        .unwrap();
    assert!(matches!(
        error,
        FactoryError::NoManagerForMode {
            mode: ManagerMode::Isolated,
            ..
        }
    ));
    assert!(error.to_string().contains("linked"), "{error}");
}

#[test]
fn a_mode_is_resolved_by_name_by_uniqueness_or_by_choice() {
    // Two unified managers, neither named "unified": ambiguous...
    let two = || {
        Registry::from_entries([
            registration("memory", ManagerMode::Unified, Some(support::good_unified)),
            registration("redis", ManagerMode::Unified, Some(failing_constructor)),
        ])
    };
    let ambiguous = StandardFactory::builder().registry(two()).build();
    assert!(matches!(
        ambiguous.create_manager(None, ManagerMode::Unified),
        Err(FactoryError::AmbiguousMode { .. })
    ));
    // ... until one is chosen.
    let chosen = StandardFactory::builder()
        .registry(two())
        .use_manager(ManagerMode::Unified, "memory")
        .build();
    assert_eq!(
        chosen.registration_for(ManagerMode::Unified).unwrap().name,
        "memory"
    );
    chosen.create_manager(None, ManagerMode::Unified).unwrap();
    // Choosing a manager of the other mode is refused.
    let wrong = StandardFactory::builder()
        .registry(two())
        .use_manager(ManagerMode::Isolated, "memory")
        .build();
    assert!(matches!(
        wrong.create_manager(Some(user("a")), ManagerMode::Isolated),
        Err(FactoryError::ModeMismatch { name: "memory", .. })
    ));
    // A single manager of a mode is used whatever its name.
    let single = factory_of([registration(
        "per-user",
        ManagerMode::Isolated,
        Some(support::good_isolated),
    )]);
    assert_eq!(
        single.registration_for(ManagerMode::Isolated).unwrap().name,
        "per-user"
    );
}

#[test]
fn constructor_failures_not_buildable_and_foreign_contracts_are_refused() {
    let mut foreign = registration("old", ManagerMode::Unified, Some(support::good_unified));
    foreign.fingerprint ^= 1;
    let factory = factory_of([
        registration("broken", ManagerMode::Unified, Some(failing_constructor)),
        registration("listed-only", ManagerMode::Unified, None),
        foreign,
    ]);
    let error = factory.create_named("broken", None).err().unwrap();
    assert!(matches!(
        &error,
        FactoryError::Build {
            name: "broken",
            source: BuildError::Failed(_)
        }
    ));
    assert!(
        error.to_string().contains("database unreachable"),
        "{error}"
    );
    assert!(matches!(
        factory.create_named("listed-only", None),
        Err(FactoryError::Build {
            source: BuildError::NotBuildable {
                name: "listed-only"
            },
            ..
        })
    ));
    assert!(matches!(
        factory.create_named("old", None),
        Err(FactoryError::ProtocolMismatch { name: "old", .. })
    ));
}

#[test]
fn configuration_extensions_and_user_context_reach_the_constructor() {
    let registry = Registry::from_entries([registration(
        "isolated",
        ManagerMode::Isolated,
        Some(needs_resources),
    )]);
    // Without the resource: a typed error naming it.
    let bare = StandardFactory::builder()
        .registry(registry.clone())
        .build();
    let error = bare
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .err()
        .unwrap();
    assert!(matches!(
        error,
        FactoryError::Build {
            source: BuildError::MissingExtension { .. },
            ..
        }
    ));
    assert!(error.to_string().contains("Seen"), "{error}");

    let seen = Arc::new(Seen::default());
    let mut extensions = Extensions::new();
    extensions.insert(Arc::clone(&seen));
    let factory = StandardFactory::builder()
        .registry(registry)
        .config(
            ManagerConfig::builder()
                .queue_capacity(512)
                .build()
                .unwrap(),
        )
        .extensions(extensions)
        .build();
    factory
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    factory
        .create_manager(Some(user("bob")), ManagerMode::Isolated)
        .unwrap();
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            (512, Some("alice".to_owned())),
            (512, Some("bob".to_owned()))
        ]
    );
}

#[tokio::test]
async fn isolation_support_is_measured_not_assumed() {
    // Not verified yet: false even though an isolated manager is registered.
    let good = good_pair();
    assert!(!good.supports_user_isolation());
    let report = good.verify_isolation().await.unwrap();
    assert!(report.passed(), "{report}");
    assert!(good.supports_user_isolation());

    // An "isolated" manager that accepts everyone fails its probe.
    let leaky = factory_of([registration(
        "isolated",
        ManagerMode::Isolated,
        Some(isolated_accepting_everyone),
    )]);
    let report = leaky.verify_isolation().await.unwrap();
    assert!(!report.passed());
    assert!(!leaky.supports_user_isolation());

    // No isolated manager at all.
    let none = factory_of([registration(
        "unified",
        ManagerMode::Unified,
        Some(support::good_unified),
    )]);
    assert!(none.verify_isolation().await.is_err());
    assert!(!none.supports_user_isolation());
}

#[tokio::test]
async fn validating_a_built_instance_measures_every_flag() {
    let factory = good_pair();
    let unified = factory.create_manager(None, ManagerMode::Unified).unwrap();
    let result = factory.validate_manager_instance(&unified).await;
    assert!(result.is_valid && result.interface_compliant, "{result}");
    assert!(result.factory_method_available);
    assert!(
        !result.user_context_isolated,
        "a unified manager is not isolated"
    );
    assert!(result.is_production_ready());
    assert_eq!(result.manager_type, "TestManager");
    assert_eq!(result.registry_name.as_deref(), Some("unified"));
    assert_eq!(result.checks_run, [Check::UnknownIds]);
    assert_eq!(result.checks_skipped.len(), 16);

    let isolated = factory
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    let result = factory.validate_manager_instance(&isolated).await;
    assert!(result.user_context_isolated, "{result}");
    assert!(result.is_production_ready());
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["user_context_isolated"], true);
    assert!(json["validated_at_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn validating_broken_and_foreign_instances_reports_why() {
    let leaky = factory_of([registration(
        "isolated",
        ManagerMode::Isolated,
        Some(isolated_accepting_everyone),
    )]);
    let manager = leaky
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    let result = leaky.validate_manager_instance(&manager).await;
    assert!(!result.user_context_isolated && !result.is_valid && !result.interface_compliant);
    assert!(!result.is_production_ready());
    assert_eq!(result.validation_errors[0].method, "add_connection");

    let inventive = factory_of([registration(
        "unified",
        ManagerMode::Unified,
        Some(unified_inventing_connections),
    )]);
    let manager = inventive
        .create_manager(None, ManagerMode::Unified)
        .unwrap();
    let result = inventive.validate_manager_instance(&manager).await;
    assert!(!result.interface_compliant);
    assert_eq!(
        result.validation_errors[0].method,
        "update_connection_thread"
    );

    // Built elsewhere: no registration, no constructor known.
    let stranger = BuiltManager::unregistered(support::unified(None));
    let result = good_pair().validate_manager_instance(&stranger).await;
    assert!(!result.factory_method_available && !result.is_production_ready());
    assert!(result.manager_type.contains("not built by this factory"));
    assert!(result.interface_compliant, "{result}");
}

#[tokio::test]
async fn validating_a_live_instance_never_touches_its_users_sockets() {
    let factory = good_pair();
    let alice_manager = factory
        .create_manager(Some(user("alice")), ManagerMode::Isolated)
        .unwrap();
    let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    let connection = WebSocketConnection::new(UserId::new("alice").unwrap(), socket);
    let id = connection.connection_id.clone();
    alice_manager.add_connection(connection).await.unwrap();

    let result = factory.validate_manager_instance(&alice_manager).await;
    assert!(result.is_production_ready(), "{result}");
    let skipped: Vec<Check> = result.checks_skipped.iter().map(|s| s.check).collect();
    assert!(
        skipped.contains(&Check::DeliveryCounts) && skipped.contains(&Check::IsolationRefusesSends)
    );
    assert_eq!(
        alice_manager.get_user_connections(&UserId::new("alice").unwrap()),
        [id].into()
    );
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(20), receiver.recv()).await;
    assert!(nothing.is_err(), "alice's socket received {nothing:?}");
}

#[tokio::test]
async fn a_built_manager_carries_the_registration_it_was_built_from() {
    let factory = good_pair();
    let kept = factory
        .create_manager(Some(user("kept")), ManagerMode::Isolated)
        .unwrap();
    assert_eq!(kept.registration().map(|r| r.name), Some("isolated"));
    let result = factory.validate_manager_instance(&kept).await;
    assert!(result.factory_method_available, "{result}");
    assert_eq!(result.registry_name.as_deref(), Some("isolated"));
    assert_eq!(result.mode, Some(ManagerMode::Isolated));
    let stranger = BuiltManager::unregistered(support::unified(None));
    let result = factory.validate_manager_instance(&stranger).await;
    assert!(!result.factory_method_available);
}
