//! A manager defined in another workspace crate is validated at startup and
//! appears in the report with its own origin, beside the reference managers.
#![allow(clippy::unwrap_used)]

use example_managers as _; // without this line the linker drops `minimal`
use websocket_manager::startup::{StartupOptions, Verdict, validate_on_startup};

#[tokio::test]
async fn a_manager_from_another_crate_is_validated_and_reported() {
    let options = StartupOptions::strict().expect(["unified", "isolated", "minimal"]);
    let report = validate_on_startup(&options)
        .await
        .unwrap_or_else(|error| panic!("{}", error.report()));
    let minimal = report.manager("minimal").unwrap();
    assert_eq!(minimal.module_path, "example_managers");
    assert!(
        minimal.location.starts_with("example-managers/src/lib.rs:"),
        "{}",
        minimal.location
    );
    assert_eq!(minimal.verdict, Verdict::Compliant, "{report}");
    assert_eq!(minimal.checks_passed, minimal.checks_run);
    let table = report.to_string();
    let row = table
        .lines()
        .find(|line| line.starts_with("minimal "))
        .unwrap();
    assert!(
        row.contains("MinimalManager") && row.contains(&minimal.location),
        "{row}"
    );
    let json = serde_json::to_value(&report).unwrap();
    let names: Vec<&str> = json["managers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"minimal") && names.contains(&"unified") && names.contains(&"isolated")
    );
}
