//! Startup validation over explicit registries: every kind of violation is
//! found, reported with a fix, logged and alerted; strict mode refuses; the
//! JSON carries the table's figures.
#![allow(clippy::unwrap_used)]

mod support;

use websocket_manager::DynManager;

use support::{Bug, registration};
use websocket_manager::conformance::Check;
use websocket_manager::startup::{
    BuildContext, BuildError, ManagerMode, Registration, Registry, StartupOptions, StartupReport,
    Verdict, ViolationKind, validate_on_startup,
};

fn good() -> [Registration; 2] {
    [
        registration("unified", ManagerMode::Unified, Some(support::good_unified)),
        registration(
            "isolated",
            ManagerMode::Isolated,
            Some(support::good_isolated),
        ),
    ]
}

fn options(entries: impl IntoIterator<Item = Registration>) -> StartupOptions {
    StartupOptions::new().registry(Registry::from_entries(entries))
}

async fn report(entries: impl IntoIterator<Item = Registration>) -> StartupReport {
    validate_on_startup(&options(entries)).await.unwrap()
}

macro_rules! broken {
    ($name:ident, $mode:expr, $bug:expr) => {
        fn $name(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
            support::build($mode, context, Some($bug))
        }
    };
}
broken!(lookup_none, ManagerMode::Unified, Bug::LookupBySocketNone);
broken!(thread_to_user, ManagerMode::Unified, Bug::ThreadSendsToUser);
broken!(update_unknown, ManagerMode::Unified, Bug::UpdateUnknownTrue);
broken!(
    remove_forgets,
    ManagerMode::Unified,
    Bug::RemoveForgetsSocketIndex
);
broken!(silent_success, ManagerMode::Unified, Bug::SilentSuccess);
broken!(overcounts, ManagerMode::Unified, Bug::OvercountsRecipients);
broken!(health_zero, ManagerMode::Unified, Bug::HealthCountsZero);
broken!(
    accepts_everyone,
    ManagerMode::Isolated,
    Bug::AcceptsOtherUsers
);
broken!(
    sends_to_others,
    ManagerMode::Isolated,
    Bug::SendsToOtherUsers
);

fn failing_constructor(_: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    Err(BuildError::Failed("redis unreachable".into()))
}

#[tokio::test]
async fn an_all_good_registry_passes_strict_validation() {
    let options = StartupOptions::strict()
        .registry(Registry::from_entries(good()))
        .expect(["unified", "isolated"]);
    let report = validate_on_startup(&options).await.unwrap();
    assert!(report.passed && report.strict, "{report}");
    assert!(report.violations.is_empty());
    let unified = report.manager("unified").unwrap();
    assert_eq!(unified.verdict, Verdict::Compliant);
    // unique name, fingerprint, constructor + 17 probes
    assert_eq!((unified.checks_passed, unified.checks_run), (20, 20));
    assert_eq!(unified.compliance_percent, 100.0);
    let isolated = report.manager("isolated").unwrap();
    assert_eq!((isolated.checks_passed, isolated.checks_run), (22, 22));
    assert_eq!(report.checks_run, 42);
    assert!(isolated.location.ends_with(".rs:0") || isolated.location.contains("support"));
}

#[tokio::test]
async fn duplicated_names_are_reported_on_each_registration() {
    let mut entries = good().to_vec();
    entries.push(registration(
        "unified",
        ManagerMode::Unified,
        Some(support::good_unified),
    ));
    let report = report(entries).await;
    assert!(!report.passed);
    assert_eq!(report.duplicate_names.len(), 1);
    assert_eq!(report.duplicate_names[0].name, "unified");
    let duplicated: Vec<_> = report
        .managers
        .iter()
        .filter(|m| m.name == "unified")
        .collect();
    assert_eq!(duplicated.len(), 2);
    for manager in duplicated {
        assert_eq!(manager.verdict, Verdict::NonCompliant);
        assert_eq!(manager.failures[0].check, "unique_name");
        assert!(manager.failures[0].fix.contains("name = "));
    }
    assert_eq!(
        report.manager("isolated").unwrap().verdict,
        Verdict::Compliant
    );
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.kind == ViolationKind::DuplicateName)
    );
    assert!(report.to_string().contains("duplicated name `unified`"));
}

#[tokio::test]
async fn a_manager_compiled_against_another_contract_is_refused_unprobed() {
    let mut foreign = registration(
        "old-contract",
        ManagerMode::Unified,
        Some(support::good_unified),
    );
    foreign.fingerprint = websocket_manager::contract::PROTOCOL_FINGERPRINT.wrapping_add(1);
    let report = report([foreign]).await;
    let manager = report.manager("old-contract").unwrap();
    assert_eq!(manager.verdict, Verdict::NonCompliant);
    assert_eq!(manager.failures.len(), 1);
    assert_eq!(manager.failures[0].check, "protocol_fingerprint");
    assert!(manager.failures[0].fix.contains("rebuild"));
    assert!(manager.skipped[0].reason.contains("another contract"));
    assert_eq!(report.violations[0].kind, ViolationKind::ProtocolMismatch);
}

#[tokio::test]
async fn missing_expected_managers_are_caught() {
    let options = options([good()[0]]).expect(["unified", "isolated"]);
    let report = validate_on_startup(&options).await.unwrap();
    assert_eq!(report.missing_expected, ["isolated"]);
    assert!(!report.passed);
    let violation = report.violations.last().unwrap();
    assert_eq!(violation.kind, ViolationKind::MissingExpected);
    assert_eq!(violation.manager, "isolated");
    assert!(violation.failure.fix.contains("use that_crate as _;"));
    assert!(
        report
            .to_string()
            .contains("missing: expected manager `isolated`")
    );
}

#[tokio::test]
async fn unbuildable_registrations_are_listed_and_failing_constructors_fail() {
    let report = report([
        registration("listed-only", ManagerMode::Unified, None),
        registration("flaky", ManagerMode::Unified, Some(failing_constructor)),
    ])
    .await;
    let listed = report.manager("listed-only").unwrap();
    assert_eq!(listed.verdict, Verdict::NotBuildable);
    assert!(listed.failures.is_empty());
    assert!(
        report
            .to_string()
            .contains("not buildable (factory = false)")
    );
    let flaky = report.manager("flaky").unwrap();
    assert_eq!(flaky.verdict, Verdict::NonCompliant);
    assert_eq!(flaky.failures[0].method, "constructor");
    assert!(flaky.failures[0].got.contains("redis unreachable"));
    assert_eq!(
        report.violations.len(),
        1,
        "the listed-only manager is no violation"
    );
    assert_eq!(report.violations[0].kind, ViolationKind::ConstructorFailed);

    // Expected but not buildable: a failure.
    let options =
        options([registration("listed-only", ManagerMode::Unified, None)]).expect(["listed-only"]);
    let report = validate_on_startup(&options).await.unwrap();
    let listed = report.manager("listed-only").unwrap();
    assert_eq!(listed.verdict, Verdict::NonCompliant);
    assert!(listed.failures[0].fix.contains("factory = false"));
}

#[tokio::test]
async fn each_probe_catches_its_broken_manager() {
    type Ctor = websocket_manager::startup::Constructor;
    let cases: [(&str, ManagerMode, Ctor, Check, &str); 9] = [
        (
            "lookup-none",
            ManagerMode::Unified,
            lookup_none,
            Check::AddThenLookupBySocket,
            "get_connection_id_by_websocket",
        ),
        (
            "thread-to-user",
            ManagerMode::Unified,
            thread_to_user,
            Check::ThreadRouting,
            "send_to_thread",
        ),
        (
            "update-unknown",
            ManagerMode::Unified,
            update_unknown,
            Check::UnknownIds,
            "update_connection_thread",
        ),
        (
            "remove-forgets",
            ManagerMode::Unified,
            remove_forgets,
            Check::RemovalClearsLookups,
            "remove_connection",
        ),
        (
            "silent-success",
            ManagerMode::Unified,
            silent_success,
            Check::DeliveryCounts,
            "send_to_user",
        ),
        (
            "overcounts",
            ManagerMode::Unified,
            overcounts,
            Check::DeliveryCounts,
            "send_to_user",
        ),
        (
            "health-zero",
            ManagerMode::Unified,
            health_zero,
            Check::HealthCounts,
            "get_connection_health",
        ),
        (
            "accepts-everyone",
            ManagerMode::Isolated,
            accepts_everyone,
            Check::IsolationRefusesConnections,
            "add_connection",
        ),
        (
            "sends-to-others",
            ManagerMode::Isolated,
            sends_to_others,
            Check::IsolationRefusesSends,
            "send_to_user",
        ),
    ];
    let report = report(
        cases
            .iter()
            .map(|(name, mode, ctor, _, _)| registration(name, *mode, Some(*ctor))),
    )
    .await;
    for (name, _, _, check, method) in cases {
        let manager = report.manager(name).unwrap();
        assert_eq!(manager.verdict, Verdict::NonCompliant, "{name}");
        let failure = manager
            .failures
            .iter()
            .find(|f| f.check == check.name())
            .unwrap_or_else(|| panic!("{name}: {check} did not fail:\n{manager}"));
        assert_eq!(failure.method, method, "{name}");
        assert!(manager.checks_passed < manager.checks_run);
        assert!(manager.compliance_percent < 100.0);
    }
    let text = report.to_string();
    assert!(
        text.contains("lookup-none :: get_connection_id_by_websocket [add_then_lookup_by_socket]"),
        "{text}"
    );
    // Printed with `println!`, a report ends without a newline of its own.
    assert!(!text.ends_with('\n'), "{text:?}");
}

#[tokio::test]
async fn strict_mode_refuses_what_report_mode_only_marks() {
    let entries = [registration(
        "lookup-none",
        ManagerMode::Unified,
        Some(lookup_none),
    )];
    let marked = report(entries).await;
    assert!(!marked.passed && !marked.strict);
    let options = StartupOptions::strict().registry(Registry::from_entries(entries));
    let error = validate_on_startup(&options).await.unwrap_err();
    let refused = error.report();
    assert!(refused.strict && !refused.passed);
    let summary = |r: &StartupReport| -> Vec<(String, String, String)> {
        r.managers[0]
            .failures
            .iter()
            .map(|f| (f.check.clone(), f.method.clone(), f.got.clone()))
            .collect()
    };
    assert_eq!(summary(refused), summary(&marked));
    assert_eq!(refused.checks_passed, marked.checks_passed);
    assert!(error.to_string().contains("FAILED (strict)"), "{error}");
}

#[tokio::test]
async fn excluded_registrations_are_listed_not_validated() {
    let options = options([
        good()[0],
        registration("lookup-none", ManagerMode::Unified, Some(lookup_none)),
    ])
    .exclude(["lookup-none"]);
    let report = validate_on_startup(&options).await.unwrap();
    assert!(report.passed, "{report}");
    assert!(report.manager("lookup-none").is_none());
    assert_eq!(report.excluded.len(), 1);
    assert!(report.excluded[0].starts_with("lookup-none (TestManager at "));
}

#[tokio::test]
async fn json_parses_and_carries_the_tables_figures() {
    let report = report([
        good()[0],
        good()[1],
        registration("lookup-none", ManagerMode::Unified, Some(lookup_none)),
        registration("listed-only", ManagerMode::Isolated, None),
    ])
    .await;
    let table = report.to_string();
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["checks_run"], report.checks_run);
    let managers = json["managers"].as_array().unwrap();
    assert_eq!(managers.len(), 4);
    for manager in managers {
        let name = manager["name"].as_str().unwrap();
        let row = table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"));
        let cells = [
            manager["mode"].as_str().unwrap().to_owned(),
            manager["type_name"].as_str().unwrap().to_owned(),
            manager["location"].as_str().unwrap().to_owned(),
            format!("{}/{}", manager["checks_passed"], manager["checks_run"]),
            format!("{:.1}%", manager["compliance_percent"].as_f64().unwrap()),
            format!("{:.3} ms", manager["duration_ms"].as_f64().unwrap()),
        ];
        for cell in cells {
            assert!(row.contains(&cell), "row `{row}` lacks `{cell}`");
        }
        let verdict = manager["verdict"].as_str().unwrap();
        let shown = match verdict {
            "compliant" => "compliant",
            "non_compliant" => "NON-COMPLIANT",
            "not_buildable" => "not buildable",
            other => panic!("unknown verdict {other}"),
        };
        assert!(row.contains(shown), "{row} / {verdict}");
        for failure in manager["failures"].as_array().unwrap() {
            for field in ["method", "expected", "got", "fix"] {
                assert!(table.contains(failure[field].as_str().unwrap()), "{field}");
            }
        }
    }
    let broken = managers
        .iter()
        .find(|m| m["name"] == "lookup-none")
        .unwrap();
    assert_eq!(
        broken["failures"][0]["method"],
        "get_connection_id_by_websocket"
    );
    assert_eq!(
        broken["checks_passed"].as_u64().unwrap() + 1,
        broken["checks_run"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn the_global_registry_lists_this_binarys_managers() {
    let report = validate_on_startup(&StartupOptions::new()).await.unwrap();
    let test_manager = report.manager("test-manager").unwrap();
    assert_eq!(test_manager.verdict, Verdict::NotBuildable);
    assert!(
        test_manager.location.contains("support"),
        "{}",
        test_manager.location
    );
}

#[tokio::test]
async fn the_reference_managers_pass_strict_startup_validation() {
    let options = StartupOptions::strict().expect(["unified", "isolated"]);
    let report = validate_on_startup(&options)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    for name in ["unified", "isolated"] {
        let manager = report.manager(name).unwrap();
        assert_eq!(manager.verdict, Verdict::Compliant, "{report}");
        assert!(
            manager.location.contains("runtime/src/managers"),
            "{}",
            manager.location
        );
    }
    println!("{report}");
}

/// A resource only the application can provide.
struct RedisUrl(#[allow(dead_code)] &'static str);

fn needs_redis(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    context.require_extension::<RedisUrl>()?;
    support::good_unified(context)
}

#[tokio::test]
async fn the_probes_build_with_the_options_startup_was_given() {
    let entries = [registration(
        "needs-redis",
        ManagerMode::Unified,
        Some(needs_redis),
    )];
    // without the resource it is not in use here: listed, not probed...
    let without = report(entries).await;
    let listed = without.manager("needs-redis").unwrap();
    assert_eq!(listed.verdict, Verdict::NotConfigured, "{without}");
    assert!(without.violations.is_empty(), "{without}");
    // ...unless it is expected: then the first build already fails
    let expected = validate_on_startup(&options(entries).expect(["needs-redis"]))
        .await
        .unwrap();
    assert!(!expected.violations.is_empty(), "{expected}");

    // with it, every probe's fresh instance gets it too, not only the first build
    let mut extensions = websocket_manager::startup::Extensions::new();
    extensions.insert(RedisUrl("redis://127.0.0.1"));
    let with = validate_on_startup(&options(entries).extensions(extensions))
        .await
        .unwrap();
    assert!(with.violations.is_empty(), "{with}");
    assert_eq!(with.checks_passed, with.checks_run, "{with}");
}
