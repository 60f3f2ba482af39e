//! What validation found, for an operator (`Display`: aligned tables) and for
//! CI and dashboards (`serde::Serialize`: JSON with the same figures).
//!
//! * [`StartupReport`]: every registered manager, from
//!   [`validate_on_startup`](crate::startup::validate_on_startup).
//! * [`ComplianceReport`]: one manager: checks passed out of run, compliance,
//!   time, verdict, and each failure with method, expected, got and fix.
//! * [`FactoryValidationResult`]: one live instance, from
//!   [`ManagerFactory::validate_manager_instance`](crate::startup::ManagerFactory::validate_manager_instance).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::conformance::{Check, CheckFailure, SkippedCheck};
use crate::context::ManagerMode;
use crate::health::unix_millis;
use crate::registry::DuplicateName;

fn serialize_millis<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration_ms(*duration))
}

fn serialize_time<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(unix_millis(*time))
}

/// Milliseconds, rounded to the microsecond: the figure both the table and
/// the JSON show.
fn duration_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A percentage rounded to one decimal: the figure both the table and the
/// JSON show.
fn percent(passed: usize, run: usize) -> f64 {
    if run == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)] // check counts are tiny
    let ratio = passed as f64 / run as f64;
    (ratio * 1000.0).round() / 10.0
}

/// The verdict on one manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Compliant,
    /// At least one check failed.
    NonCompliant,
    /// Registered with `factory = false` and not expected: it cannot be built,
    /// so its behaviour was not probed. Listed, not failed.
    NotBuildable,
    /// Its constructor needs an application resource (such as
    /// `websocket_manager::managers::ClusterConfig`) that this process did not provide, and it
    /// is not expected: this process does not use it, so its behaviour was
    /// not probed. Listed, not failed; expect it
    /// ([`StartupOptions::expect`](crate::startup::StartupOptions::expect)) to make a
    /// missing resource fail startup.
    NotConfigured,
}

impl Verdict {
    /// Whether the verdict fails startup.
    pub fn is_failure(self) -> bool {
        self == Verdict::NonCompliant
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Compliant => "compliant",
            Verdict::NonCompliant => "NON-COMPLIANT",
            Verdict::NotBuildable => "not buildable (factory = false)",
            Verdict::NotConfigured => "not configured in this process",
        })
    }
}

/// One check as run on one manager: the registration checks
/// (`unique_name`, `protocol_fingerprint`, `constructor`) and the
/// conformance probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRecord {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
}

/// One manager's compliance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComplianceReport {
    /// The registry name.
    pub name: String,
    /// The Rust type.
    pub type_name: String,
    /// The module that holds the impl.
    pub module_path: String,
    /// How it is shared.
    pub mode: ManagerMode,
    /// `file:line` of the annotated impl.
    pub location: String,
    /// Checks that passed.
    pub checks_passed: usize,
    /// Checks that ran.
    pub checks_run: usize,
    /// `checks_passed / checks_run`, in percent, one decimal.
    pub compliance_percent: f64,
    /// Time spent validating it.
    #[serde(rename = "duration_ms", serialize_with = "serialize_millis")]
    pub duration: Duration,
    /// The verdict.
    pub verdict: Verdict,
    /// Every check that ran, in order.
    pub checks: Vec<CheckRecord>,
    /// Every failure: method, expected, got, fix.
    pub failures: Vec<CheckFailure>,
    /// Checks that were not run, and why.
    pub skipped: Vec<SkippedStep>,
}

/// A check not run on a manager, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedStep {
    /// The check's name.
    pub name: String,
    /// Why it was not run.
    pub reason: String,
}

impl ComplianceReport {
    /// Builds the figures and the verdict from the checks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        registration: &crate::registry::Registration,
        checks: Vec<CheckRecord>,
        failures: Vec<CheckFailure>,
        skipped: Vec<SkippedStep>,
        listed_only: Option<Verdict>,
        duration: Duration,
    ) -> Self {
        let checks_run = checks.len();
        let checks_passed = checks.iter().filter(|c| c.passed).count();
        let verdict = if !failures.is_empty() {
            Verdict::NonCompliant
        } else if let Some(verdict) = listed_only {
            verdict
        } else {
            Verdict::Compliant
        };
        ComplianceReport {
            name: registration.name.to_owned(),
            type_name: registration.type_name.to_owned(),
            module_path: registration.module_path.to_owned(),
            mode: registration.mode,
            location: registration.location(),
            checks_passed,
            checks_run,
            compliance_percent: percent(checks_passed, checks_run),
            duration,
            verdict,
            checks,
            failures,
            skipped,
        }
    }

    fn row(&self) -> [String; 8] {
        [
            self.name.clone(),
            self.mode.to_string(),
            self.type_name.clone(),
            self.location.clone(),
            format!("{}/{}", self.checks_passed, self.checks_run),
            format!("{:.1}%", self.compliance_percent),
            format!("{:.3} ms", duration_ms(self.duration)),
            self.verdict.to_string(),
        ]
    }

    fn write_failures(&self, f: &mut impl fmt::Write) -> fmt::Result {
        for failure in &self.failures {
            writeln!(
                f,
                "  {} :: {} [{}]",
                self.name, failure.method, failure.check
            )?;
            writeln!(f, "    expected: {}", failure.expected)?;
            writeln!(f, "    got:      {}", failure.got)?;
            writeln!(f, "    fix:      {}", failure.fix)?;
        }
        Ok(())
    }
}

const HEADERS: [&str; 8] = [
    "NAME",
    "MODE",
    "TYPE",
    "LOCATION",
    "CHECKS",
    "COMPLIANCE",
    "TIME",
    "VERDICT",
];

impl fmt::Display for ComplianceReport {
    /// One table row, then each failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::table::lines(f, |f| {
            crate::table::write_table(f, &HEADERS, &[self.row()])?;
            self.write_failures(f)
        })
    }
}

/// What a violation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Two registrations share a name.
    DuplicateName,
    /// Checked against another version of the contract.
    ProtocolMismatch,
    /// The manager could not be built.
    ConstructorFailed,
    /// A behavioural probe failed.
    ProbeFailed,
    /// A manager named in `StartupOptions::expect` is not registered.
    MissingExpected,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::DuplicateName => "duplicate_name",
            ViolationKind::ProtocolMismatch => "protocol_mismatch",
            ViolationKind::ConstructorFailed => "constructor_failed",
            ViolationKind::ProbeFailed => "probe_failed",
            ViolationKind::MissingExpected => "missing_expected",
        })
    }
}

/// One thing startup validation refuses; each is logged at error level and
/// handed to the alert callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Violation {
    /// The manager's registry name (or the expected name that is missing).
    pub manager: String,
    /// What it is about.
    pub kind: ViolationKind,
    /// Method, expected, got and fix.
    pub failure: CheckFailure,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.manager, self.kind, self.failure)
    }
}

/// Every registered manager's compliance, as found at startup.
///
/// ```
/// use websocket_manager::startup::{StartupOptions, Verdict, validate_on_startup};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let report = validate_on_startup(&StartupOptions::strict().expect(["unified", "isolated"]))
///     .await
///     .map_err(|error| error.report().to_string())?;
/// assert_eq!(report.manager("unified").unwrap().verdict, Verdict::Compliant);
/// println!("{report}"); // aligned table for the logs
/// let json = serde_json::to_value(&report).unwrap(); // same figures for CI
/// assert_eq!(json["checks_run"], report.checks_run);
/// # Ok::<(), String>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StartupReport {
    /// Whether startup may go on: no non-compliant manager, no duplicated
    /// name, no missing expected manager.
    pub passed: bool,
    /// Whether it ran in enforcement mode.
    pub strict: bool,
    /// This runtime's contract fingerprint, hexadecimal.
    pub protocol_fingerprint: String,
    /// When validation started (milliseconds since the Unix epoch in JSON).
    #[serde(rename = "started_at_ms", serialize_with = "serialize_time")]
    pub started_at: SystemTime,
    /// Time the whole validation took.
    #[serde(rename = "duration_ms", serialize_with = "serialize_millis")]
    pub duration: Duration,
    /// Checks passed, all managers together.
    pub checks_passed: usize,
    /// Checks run, all managers together.
    pub checks_run: usize,
    /// One report per validated registration, sorted by name.
    pub managers: Vec<ComplianceReport>,
    /// Names given to `StartupOptions::expect`.
    pub expected: Vec<String>,
    /// Expected names with no registration.
    pub missing_expected: Vec<String>,
    /// Names registered more than once.
    pub duplicate_names: Vec<DuplicateName>,
    /// Registrations left out with `StartupOptions::exclude` (name, type at
    /// location), listed so that nothing vanishes silently.
    pub excluded: Vec<String>,
    /// Every violation, in report order.
    pub violations: Vec<Violation>,
}

impl StartupReport {
    /// The report of the manager registered as `name` (the first, if the
    /// name is duplicated).
    pub fn manager(&self, name: &str) -> Option<&ComplianceReport> {
        self.managers.iter().find(|m| m.name == name)
    }

    /// Number of managers with each verdict: (compliant, non-compliant,
    /// not buildable).
    pub fn verdict_counts(&self) -> (usize, usize, usize) {
        let count = |v| self.managers.iter().filter(|m| m.verdict == v).count();
        (
            count(Verdict::Compliant),
            count(Verdict::NonCompliant),
            count(Verdict::NotBuildable),
        )
    }

    /// One line: verdict, counts and time.
    pub fn summary(&self) -> String {
        let (compliant, failing, unbuildable) = self.verdict_counts();
        let unconfigured = self
            .managers
            .iter()
            .filter(|m| m.verdict == Verdict::NotConfigured)
            .count();
        format!(
            "{} ({}): {} manager(s): {compliant} compliant, {failing} non-compliant, {unbuildable} not buildable{}; {}/{} checks passed; {} missing expected, {} duplicated name(s); {:.3} ms",
            if self.passed { "PASSED" } else { "FAILED" },
            if self.strict { "strict" } else { "report only" },
            self.managers.len(),
            if unconfigured > 0 {
                format!(", {unconfigured} not configured")
            } else {
                String::new()
            },
            self.checks_passed,
            self.checks_run,
            self.missing_expected.len(),
            self.duplicate_names.len(),
            duration_ms(self.duration),
        )
    }
}

impl fmt::Display for StartupReport {
    /// A summary line, the table of managers, then every failure with its
    /// fix, missing and duplicated names and exclusions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::table::lines(f, |f| self.render(f))
    }
}

impl StartupReport {
    fn render(&self, f: &mut String) -> fmt::Result {
        use fmt::Write;
        writeln!(f, "websocket-manager startup validation {}", self.summary())?;
        writeln!(f, "contract fingerprint {}", self.protocol_fingerprint)?;
        let rows: Vec<[String; 8]> = self.managers.iter().map(ComplianceReport::row).collect();
        crate::table::write_table(f, &HEADERS, &rows)?;
        if self.managers.iter().any(|m| !m.failures.is_empty()) {
            writeln!(f, "failures:")?;
            for manager in &self.managers {
                manager.write_failures(f)?;
            }
        }
        for name in &self.missing_expected {
            writeln!(
                f,
                "missing: expected manager `{name}` is not registered; is the crate that defines it linked? (`use that_crate as _;`)"
            )?;
        }
        for duplicate in &self.duplicate_names {
            writeln!(
                f,
                "duplicated name `{}`: {}",
                duplicate.name,
                duplicate.registrations.join(", ")
            )?;
        }
        for excluded in &self.excluded {
            writeln!(f, "excluded: {excluded}")?;
        }
        Ok(())
    }
}

/// What [`ManagerFactory::validate_manager_instance`](crate::startup::ManagerFactory::validate_manager_instance)
/// found about one live instance. Every flag is measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FactoryValidationResult {
    /// No validation error.
    pub is_valid: bool,
    /// Every failure: method, expected, got, fix.
    pub validation_errors: Vec<CheckFailure>,
    /// The Rust type, or `unknown (not built by this factory)`.
    pub manager_type: String,
    /// The registry name, when the factory built the instance.
    pub registry_name: Option<String>,
    /// The registered mode, when the factory built the instance.
    pub mode: Option<ManagerMode>,
    /// The isolation probe saw another user's connection refused.
    pub user_context_isolated: bool,
    /// The contract fingerprint matches and every probe that ran passed.
    pub interface_compliant: bool,
    /// The instance came from a registration whose constructor succeeded
    /// (it was built by this factory).
    pub factory_method_available: bool,
    /// When (milliseconds since the Unix epoch in JSON).
    #[serde(rename = "validated_at_ms", serialize_with = "serialize_time")]
    pub validated_at: SystemTime,
    /// The probes that ran.
    pub checks_run: Vec<Check>,
    /// The probes that were skipped because they could touch real users'
    /// sockets, or do not apply, and why.
    pub checks_skipped: Vec<SkippedCheck>,
}

impl FactoryValidationResult {
    /// Valid, compliant, built by a constructor, and isolated if it is an
    /// isolated manager.
    pub fn is_production_ready(&self) -> bool {
        self.is_valid
            && self.interface_compliant
            && self.factory_method_available
            && (self.mode != Some(ManagerMode::Isolated) || self.user_context_isolated)
    }
}

impl fmt::Display for FactoryValidationResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let rows = [
            ["manager_type".to_owned(), self.manager_type.clone()],
            [
                "registry_name".to_owned(),
                self.registry_name.clone().unwrap_or_else(|| "-".to_owned()),
            ],
            [
                "mode".to_owned(),
                self.mode
                    .map_or_else(|| "unknown".to_owned(), |m| m.to_string()),
            ],
            ["is_valid".to_owned(), yes_no(self.is_valid)],
            [
                "interface_compliant".to_owned(),
                yes_no(self.interface_compliant),
            ],
            [
                "user_context_isolated".to_owned(),
                yes_no(self.user_context_isolated),
            ],
            [
                "factory_method_available".to_owned(),
                yes_no(self.factory_method_available),
            ],
            [
                "production_ready".to_owned(),
                yes_no(self.is_production_ready()),
            ],
            [
                "checks_run".to_owned(),
                self.checks_run
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            ],
        ];
        crate::table::lines(f, |f| {
            use fmt::Write;
            crate::table::write_table(f, &["FIELD", "VALUE"], &rows)?;
            for skipped in &self.checks_skipped {
                writeln!(f, "skipped {}: {}", skipped.check, skipped.reason)?;
            }
            for error in &self.validation_errors {
                writeln!(f, "error: {error}")?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_milliseconds_round_once_for_table_and_json() {
        assert_eq!(percent(0, 0), 0.0);
        assert_eq!(percent(2, 3), 66.7);
        assert_eq!(percent(10, 10), 100.0);
        assert_eq!(duration_ms(Duration::from_micros(1_234_567)), 1234.567);
        assert_eq!(duration_ms(Duration::from_nanos(1_499)), 0.001);
    }
}
