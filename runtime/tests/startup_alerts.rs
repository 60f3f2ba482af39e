//! Every startup violation is a `tracing` error event with structured
//! fields, and goes to the alert callback.
//!
//! Alone in its binary: `tracing` caches callsite interest process-wide, so
//! a thread-local subscriber can miss events while other tests run the same
//! callsites concurrently.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use websocket_manager::DynManager;

use support::{Bug, registration};
use websocket_manager::startup::{
    BuildContext, BuildError, ManagerMode, Registry, StartupOptions, ViolationKind,
    validate_on_startup,
};

fn lookup_none(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    support::build(ManagerMode::Unified, context, Some(Bug::LookupBySocketNone))
}

fn failing_constructor(_: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    Err(BuildError::Failed("redis unreachable".into()))
}

#[tokio::test]
async fn every_violation_is_alerted_and_logged_at_error_level() {
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&alerts);
    let options = StartupOptions::new()
        .registry(Registry::from_entries([
            registration("lookup-none", ManagerMode::Unified, Some(lookup_none)),
            registration("flaky", ManagerMode::Unified, Some(failing_constructor)),
        ]))
        .expect(["isolated"])
        .on_violation(move |v| sink.lock().unwrap().push((v.manager.clone(), v.kind)));
    let events = capture::Events::default();
    let report = {
        let _guard = tracing::subscriber::set_default(events.clone());
        validate_on_startup(&options).await.unwrap()
    };
    let alerts = alerts.lock().unwrap().clone();
    assert_eq!(
        alerts,
        [
            ("flaky".to_owned(), ViolationKind::ConstructorFailed),
            ("lookup-none".to_owned(), ViolationKind::ProbeFailed),
            ("isolated".to_owned(), ViolationKind::MissingExpected),
        ]
    );
    assert_eq!(alerts.len(), report.violations.len());
    let errors = events.errors();
    assert_eq!(errors.len(), 3);
    let lookup = errors
        .iter()
        .find(|e| e["manager"] == "lookup-none")
        .unwrap();
    assert_eq!(lookup["method"], "get_connection_id_by_websocket");
    assert_eq!(lookup["check"], "add_then_lookup_by_socket");
    assert_eq!(lookup["kind"], "probe_failed");
    for field in ["expected", "got", "fix"] {
        assert!(!lookup[field].is_empty(), "{field}");
    }
}

/// A minimal `tracing` subscriber that keeps error events' fields.
mod capture {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub struct Events(Arc<Mutex<Vec<HashMap<String, String>>>>);

    impl Events {
        pub fn errors(&self) -> Vec<HashMap<String, String>> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Fields<'a>(&'a mut HashMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl Subscriber for Events {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            if *event.metadata().level() == Level::ERROR {
                let mut fields = HashMap::new();
                event.record(&mut Fields(&mut fields));
                self.0.lock().unwrap().push(fields);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
