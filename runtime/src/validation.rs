//! Startup validation (documented on `validate_on_startup`).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use crate::config::ManagerConfig;
use crate::conformance::{CheckFailure, Conformance, ConformanceOptions, ProbeScope};
use crate::context::ManagerMode;
use crate::extensions::Extensions;
use crate::protocol::PROTOCOL_FINGERPRINT;
use crate::registry::{BuildContext, BuildError, DuplicateName, Registration, Registry};
use crate::report::{
    CheckRecord, ComplianceReport, SkippedStep, StartupReport, Violation, ViolationKind,
};

/// A custom alert hook (pager, metrics), called once per violation.
pub type AlertCallback = Arc<dyn Fn(&Violation) + Send + Sync>;

/// What [`validate_on_startup`] checks and how it reacts.
///
/// ```
/// use websocket_manager::startup::StartupOptions;
/// let options = StartupOptions::strict()
///     .expect(["unified", "isolated"])
///     .exclude(["experimental"])
///     .on_violation(|violation| eprintln!("ALERT {violation}"));
/// assert!(options.is_strict());
/// ```
#[derive(Clone, Default)]
pub struct StartupOptions {
    registry: Option<Registry>,
    expected: Vec<String>,
    excluded: Vec<String>,
    strict: bool,
    /// How instances are built and probed: the kit's own settings.
    conformance: ConformanceOptions,
    on_violation: Option<AlertCallback>,
}

impl fmt::Debug for StartupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupOptions")
            .field("registry", &self.registry)
            .field("expected", &self.expected)
            .field("excluded", &self.excluded)
            .field("strict", &self.strict)
            .field("conformance", &self.conformance)
            .field("on_violation", &self.on_violation.is_some())
            .finish()
    }
}

impl StartupOptions {
    /// Report-only mode over [`Registry::global`]: failures are marked in
    /// the report, validation returns `Ok`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enforcement mode: any failure makes [`validate_on_startup`] return
    /// [`StartupError::Failed`] with the full report.
    pub fn strict() -> Self {
        StartupOptions {
            strict: true,
            ..Self::default()
        }
    }

    /// Turns enforcement on or off.
    pub fn enforce(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Whether enforcement is on.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Validates `registry` instead of the global one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Managers that must be registered (catches a crate that was not
    /// linked) and buildable.
    pub fn expect<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.expected.extend(names.into_iter().map(Into::into));
        self
    }

    /// Registrations to leave out (a manager under development, a known-bad
    /// demo). They are listed in the report's `excluded`, never dropped
    /// silently.
    pub fn exclude<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.excluded.extend(names.into_iter().map(Into::into));
        self
    }

    /// The configuration handed to every constructor.
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.conformance.config = config;
        self
    }

    /// The application resources handed to every constructor.
    pub fn extensions(mut self, extensions: Extensions) -> Self {
        self.conformance.extensions = extensions;
        self
    }

    /// How long probes wait for an expected frame (see
    /// [`Conformance::delivery_wait`]).
    pub fn delivery_wait(mut self, wait: Duration) -> Self {
        self.conformance.delivery_wait = wait;
        self
    }

    /// How long one probe may take before it fails as hung (see
    /// [`Conformance::check_timeout`]; default
    /// [`DEFAULT_CHECK_TIMEOUT`](crate::conformance::DEFAULT_CHECK_TIMEOUT)).
    pub fn check_timeout(mut self, limit: Option<Duration>) -> Self {
        self.conformance.check_timeout = limit;
        self
    }

    /// Replaces the kit's settings (configuration, extensions, waits) at
    /// once, e.g. with the ones a conformance test uses.
    pub fn conformance(mut self, options: ConformanceOptions) -> Self {
        self.conformance = options;
        self
    }

    /// The kit's settings in effect.
    pub fn conformance_options(&self) -> &ConformanceOptions {
        &self.conformance
    }

    /// Calls `alert` once per violation, after the `tracing` error event.
    pub fn on_violation(mut self, alert: impl Fn(&Violation) + Send + Sync + 'static) -> Self {
        self.on_violation = Some(Arc::new(alert));
        self
    }
}

/// Startup validation refused to let the server start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// Enforcement mode found at least one violation.
    #[error("websocket manager startup validation {}", .0.summary())]
    Failed(Box<StartupReport>),
}

impl StartupError {
    /// The full report.
    pub fn report(&self) -> &StartupReport {
        match self {
            StartupError::Failed(report) => report,
        }
    }

    /// The full report, by value.
    pub fn into_report(self) -> StartupReport {
        match self {
            StartupError::Failed(report) => *report,
        }
    }
}

/// Startup validation: proves every registered manager works before traffic
/// arrives.
///
/// It enumerates the registry and, for each manager,
/// checks that its name is unique, that it was compiled against this
/// contract, that it can be built, and then runs every conformance probe on
/// fresh instances built with a synthetic user context (see
/// [`conformance`](crate::conformance)). Expected managers that are missing
/// (a crate that was not linked) are reported too. Every violation is a
/// `tracing` error event and goes to the optional alert callback.
///
/// ```
/// use websocket_manager::startup::{Registry, StartupOptions, validate_on_startup};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // Strict mode: any failure is an `Err` carrying the full report.
/// let options = StartupOptions::strict()
///     .registry(Registry::from_entries([]))
///     .expect(["unified"]);
/// let error = validate_on_startup(&options).await.unwrap_err();
/// assert_eq!(error.report().missing_expected, ["unified"]);
/// println!("{}", error.report()); // the table an operator reads
/// # });
/// ```
///
/// # Errors
///
/// In strict mode, [`StartupError::Failed`] when any manager is
/// non-compliant, a name is duplicated or an expected manager is missing.
pub async fn validate_on_startup(options: &StartupOptions) -> Result<StartupReport, StartupError> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let registry = options.registry.clone().unwrap_or_else(Registry::global);
    let duplicates = registry.duplicate_names();
    let excluded_names: BTreeSet<&str> = options.excluded.iter().map(String::as_str).collect();
    let expected_names: BTreeSet<&str> = options.expected.iter().map(String::as_str).collect();

    let mut managers = Vec::new();
    let mut excluded = Vec::new();
    for registration in registry.entries() {
        if excluded_names.contains(registration.name) {
            excluded.push(format!(
                "{} ({} at {})",
                registration.name,
                registration.type_name,
                registration.location()
            ));
            continue;
        }
        let expected = expected_names.contains(registration.name);
        managers.push(validate_registration(registration, &duplicates, expected, options).await);
    }
    let missing_expected: Vec<String> = options
        .expected
        .iter()
        .filter(|name| !managers.iter().any(|m: &ComplianceReport| &m.name == *name))
        .cloned()
        .collect();

    let mut violations = Vec::new();
    for manager in &managers {
        for failure in &manager.failures {
            violations.push(Violation {
                manager: manager.name.clone(),
                kind: kind_of(failure),
                failure: failure.clone(),
            });
        }
    }
    for name in &missing_expected {
        violations.push(Violation {
            manager: name.clone(),
            kind: ViolationKind::MissingExpected,
            failure: CheckFailure::new(
                "expected_manager",
                "registration",
                format!("a manager registered as `{name}`"),
                "no such registration (or it was excluded)",
                "link the crate that defines it (`use that_crate as _;` in the binary) or fix the name in StartupOptions::expect",
            ),
        });
    }
    for violation in &violations {
        alert(violation, options);
    }

    let report = StartupReport {
        passed: violations.is_empty(),
        strict: options.strict,
        protocol_fingerprint: format!("{PROTOCOL_FINGERPRINT:016x}"),
        started_at,
        duration: started.elapsed(),
        checks_passed: managers.iter().map(|m| m.checks_passed).sum(),
        checks_run: managers.iter().map(|m| m.checks_run).sum(),
        managers,
        expected: options.expected.clone(),
        missing_expected,
        duplicate_names: duplicates,
        excluded,
        violations,
    };
    tracing::info!(
        target: "websocket_manager::startup",
        passed = report.passed,
        strict = report.strict,
        managers = report.managers.len(),
        checks_passed = report.checks_passed,
        checks_run = report.checks_run,
        "{}",
        report.summary()
    );
    if options.strict && !report.passed {
        return Err(StartupError::Failed(Box::new(report)));
    }
    Ok(report)
}

const UNIQUE_NAME: &str = "unique_name";
const PROTOCOL: &str = "protocol_fingerprint";
const CONSTRUCTOR: &str = "constructor";

fn kind_of(failure: &CheckFailure) -> ViolationKind {
    match failure.check.as_str() {
        UNIQUE_NAME => ViolationKind::DuplicateName,
        PROTOCOL => ViolationKind::ProtocolMismatch,
        CONSTRUCTOR => ViolationKind::ConstructorFailed,
        _ => ViolationKind::ProbeFailed,
    }
}

fn alert(violation: &Violation, options: &StartupOptions) {
    let failure = &violation.failure;
    tracing::error!(
        target: "websocket_manager::startup",
        manager = %violation.manager,
        kind = %violation.kind,
        check = %failure.check,
        method = %failure.method,
        expected = %failure.expected,
        got = %failure.got,
        fix = %failure.fix,
        "websocket manager violation"
    );
    if let Some(callback) = &options.on_violation {
        callback(violation);
    }
}

/// The registration checks, then the probes on fresh instances.
async fn validate_registration(
    registration: &Registration,
    duplicates: &[DuplicateName],
    expected: bool,
    options: &StartupOptions,
) -> ComplianceReport {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut skipped = Vec::new();

    let duplicate = duplicates.iter().find(|d| d.name == registration.name);
    tally.record(
        UNIQUE_NAME,
        duplicate.map(|d| {
            CheckFailure::new(
                UNIQUE_NAME,
                "registration",
                format!("one manager registered as `{}`", registration.name),
                format!(
                    "{} registrations: {}",
                    d.registrations.len(),
                    d.registrations.join(", ")
                ),
                "give each manager its own name with #[websocket_manager(name = \"...\")]",
            )
        }),
    );

    let protocol_ok = registration.matches_protocol();
    tally.record(
        PROTOCOL,
        (!protocol_ok).then(|| {
            CheckFailure::new(
                PROTOCOL,
                "registration",
                format!("contract fingerprint {PROTOCOL_FINGERPRINT:016x}"),
                format!(
                    "{:016x}: checked against another version of the contract",
                    registration.fingerprint
                ),
                "rebuild the crate that defines this manager against this version of websocket-manager",
            )
        }),
    );

    let not_buildable = !registration.is_buildable();
    if not_buildable && !expected {
        let reason = "registered with `factory = false`: no constructor, behaviour not probed";
        skipped.push(SkippedStep {
            name: "probes".to_owned(),
            reason: reason.to_owned(),
        });
        return ComplianceReport::new(
            registration,
            tally.checks,
            tally.failures,
            skipped,
            Some(crate::report::Verdict::NotBuildable),
            started.elapsed(),
        );
    }

    // One build with the synthetic context, as the factory would build it.
    let scope = ProbeScope::new();
    let context = scope.context();
    let mut build =
        BuildContext::new(&options.conformance.config, &options.conformance.extensions).for_probe();
    if registration.mode == ManagerMode::Isolated {
        build = build.with_user_context(&context);
    }
    let built = registration.build(&build);
    if let (Err(BuildError::MissingExtension { type_name }), false) = (&built, expected) {
        skipped.push(SkippedStep {
            name: "probes".to_owned(),
            reason: format!(
                "needs the application resource `{type_name}`, which this process did not provide: not in use here, behaviour not probed (expect it to make this a failure)"
            ),
        });
        return ComplianceReport::new(
            registration,
            tally.checks,
            tally.failures,
            skipped,
            Some(crate::report::Verdict::NotConfigured),
            started.elapsed(),
        );
    }
    let constructor_ok = built.is_ok();
    tally.record(
        CONSTRUCTOR,
        built.err().map(|error| {
            CheckFailure::new(
                CONSTRUCTOR,
                "constructor",
                if expected && not_buildable {
                    "a constructor: the manager is expected at startup".to_owned()
                } else {
                    "a manager built from the configuration and extensions given".to_owned()
                },
                format!("Err({error})"),
                if not_buildable {
                    "remove `factory = false` and implement `ConstructManager`, or stop expecting it"
                } else {
                    "give the constructor what it needs (StartupOptions::config / ::extensions) or fix it"
                },
            )
        }),
    );

    if !protocol_ok || !constructor_ok {
        skipped.push(SkippedStep {
            name: "probes".to_owned(),
            reason: if protocol_ok {
                "the manager cannot be built".to_owned()
            } else {
                "compiled against another contract: its behaviour cannot be trusted".to_owned()
            },
        });
    } else {
        // In a span, so that what the manager logs while probed (an
        // isolated manager logs each refusal) reads as part of validation.
        let span = tracing::info_span!("startup_probe", manager = registration.name);
        let report = Conformance::new(registration.mode)
            .options(options.conformance.clone())
            .run(|context| registration.build(context))
            .instrument(span)
            .await;
        for outcome in report.outcomes {
            tally.record(outcome.check.name(), outcome.failure);
        }
    }
    ComplianceReport::new(
        registration,
        tally.checks,
        tally.failures,
        skipped,
        None,
        started.elapsed(),
    )
}

/// The checks run on one manager so far.
#[derive(Default)]
struct Tally {
    checks: Vec<CheckRecord>,
    failures: Vec<CheckFailure>,
}

impl Tally {
    fn record(&mut self, name: &str, failure: Option<CheckFailure>) {
        self.checks.push(CheckRecord {
            name: name.to_owned(),
            passed: failure.is_none(),
        });
        self.failures.extend(failure);
    }
}
