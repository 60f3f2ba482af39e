//! The factory: building registered managers (documented on `StandardFactory`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::Instrument;

use crate::config::ManagerConfig;
use crate::conformance::{Check, CheckFailure, Conformance, ConformanceReport};
use crate::context::{ManagerMode, UserContext};
use crate::dyn_manager::DynManager;
use crate::extensions::Extensions;
use crate::protocol::PROTOCOL_FINGERPRINT;
use crate::registry::{
    BuildContext, BuildError, Registration, Registry, RegistryError, names_or_none,
};
use crate::report::FactoryValidationResult;

/// Builds managers and vouches for them.
///
/// `validate_manager_instance` is async because the behavioural probes call
/// the manager's async methods; the trait is dyn-compatible
/// (`Arc<dyn ManagerFactory>`).
#[async_trait::async_trait]
pub trait ManagerFactory: Send + Sync {
    /// A manager for `mode`: the shared unified instance, or a new isolated
    /// instance for `user_context`.
    ///
    /// # Errors
    ///
    /// A [`FactoryError`] saying which manager could not be chosen or built,
    /// and why.
    fn create_manager(
        &self,
        user_context: Option<UserContext>,
        mode: ManagerMode,
    ) -> Result<BuiltManager, FactoryError>;

    /// Validates a manager that may already serve real users: runs only the
    /// checks that cannot touch a real user's socket and lists the others as
    /// skipped. Its registration is the one [`create_manager`](Self::create_manager)
    /// returned with it ([`BuiltManager::unregistered`] for one built
    /// elsewhere).
    async fn validate_manager_instance(&self, built: &BuiltManager) -> FactoryValidationResult;

    /// Whether an isolated manager is registered and has passed its
    /// isolation probe.
    fn supports_user_isolation(&self) -> bool;
}

/// The factory could not hand out a manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryError {
    /// An isolated manager was asked for without a user context while
    /// `require_user_context` is on.
    #[error(
        "manager `{name}` is isolated and must be built for one user: pass `Some(UserContext)` (require_user_context is on)"
    )]
    MissingUserContext {
        /// The registry name.
        name: &'static str,
    },
    /// No manager of that name, or several.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No registered manager has the requested mode.
    #[error(
        "no {mode} manager is registered (registered: {}); is the crate that defines it linked? (`use that_crate as _;`)", names_or_none(.registered)
    )]
    NoManagerForMode {
        /// The mode asked for.
        mode: ManagerMode,
        /// The registered names.
        registered: Vec<&'static str>,
    },
    /// Several managers have the requested mode and none is named after it.
    #[error(
        "several {mode} managers are registered ({}); choose one with `StandardFactory::builder().use_manager({mode:?}, \"name\")`", names_or_none(.candidates)
    )]
    AmbiguousMode {
        /// The mode asked for.
        mode: ManagerMode,
        /// Their names.
        candidates: Vec<&'static str>,
    },
    /// The manager chosen for a mode is registered with the other mode.
    #[error("manager `{name}` is registered as {actual}, not {requested}")]
    ModeMismatch {
        /// The registry name.
        name: &'static str,
        /// The mode asked for.
        requested: ManagerMode,
        /// Its registered mode.
        actual: ManagerMode,
    },
    /// The manager was checked against another version of the contract.
    #[error(
        "manager `{name}` was compiled against another version of the contract (fingerprint {found:016x}, this runtime {expected:016x}); rebuild it against this websocket-manager"
    )]
    ProtocolMismatch {
        /// The registry name.
        name: &'static str,
        /// Its fingerprint.
        found: u64,
        /// This runtime's fingerprint.
        expected: u64,
    },
    /// The constructor refused (no constructor, missing resource, bad
    /// configuration, its own failure).
    #[error("manager `{name}` could not be built: {source}")]
    Build {
        /// The registry name.
        name: &'static str,
        /// What the constructor reported.
        #[source]
        source: BuildError,
    },
}

/// A manager the factory built, with the [`Registration`] it was built
/// from, for [`validate_manager_instance`](ManagerFactory::validate_manager_instance).
/// It dereferences to the `DynManager`.
///
/// ```
/// use websocket_manager::startup::{ManagerFactory, ManagerMode, StandardFactory};
/// let factory = StandardFactory::builder().build();
/// let built = factory.create_manager(None, ManagerMode::Unified).unwrap();
/// assert_eq!(built.registration().map(|r| r.name), Some("unified"));
/// let manager = built.into_manager(); // DynManager
/// # let _ = manager;
/// ```
#[derive(Clone)]
pub struct BuiltManager {
    manager: DynManager,
    registration: Option<Registration>,
}

impl BuiltManager {
    /// A manager built elsewhere, to validate it without a registration
    /// (its mode and constructor are then unknown).
    pub fn unregistered(manager: DynManager) -> Self {
        BuiltManager {
            manager,
            registration: None,
        }
    }

    /// The registration the factory built it from (`None` for
    /// [`unregistered`](Self::unregistered)).
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// The manager.
    pub fn manager(&self) -> &DynManager {
        &self.manager
    }

    /// The manager, without its registration.
    pub fn into_manager(self) -> DynManager {
        self.manager
    }
}

impl std::ops::Deref for BuiltManager {
    type Target = DynManager;

    fn deref(&self) -> &Self::Target {
        &self.manager
    }
}

impl std::fmt::Debug for BuiltManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltManager")
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

const ISOLATION_UNVERIFIED: u8 = 0;
const ISOLATION_PASSED: u8 = 1;
const ISOLATION_FAILED: u8 = 2;

/// The factory over a [`Registry`].
///
/// Picks the manager for a mode: the one chosen with
/// [`StandardFactoryBuilder::use_manager`], else the one named after the mode
/// (`"unified"`, `"isolated"`), else the only registered manager of that
/// mode.
///
/// ```
/// use websocket_manager::startup::{ManagerMode, Registry, StandardFactory, FactoryError, ManagerFactory};
/// // An empty registry: nothing to build, and isolation is not supported.
/// let factory = StandardFactory::builder().registry(Registry::from_entries([])).build();
/// assert!(matches!(
///     factory.create_manager(None, ManagerMode::Unified),
///     Err(FactoryError::NoManagerForMode { .. })
/// ));
/// assert!(!factory.supports_user_isolation());
/// ```
///
/// [`ManagerFactory`] and [`StandardFactory`]: building registered managers
/// for a mode or a name, with configuration and application resources.
///
/// A unified manager is built once and shared; an isolated one is built per
/// [`UserContext`] and, with `require_user_context` (the default), never
/// without one. Every flag the factory reports is measured:
/// [`supports_user_isolation`](ManagerFactory::supports_user_isolation) is
/// true only after an isolated manager passed its isolation probe
/// ([`StandardFactory::verify_isolation`]), and
/// [`validate_manager_instance`](ManagerFactory::validate_manager_instance)
/// runs only the probes that are safe on a manager serving real users.
///
/// ```
/// use websocket_manager::{UserId, startup::{ManagerFactory, ManagerMode, StandardFactory, UserContext}};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let factory = StandardFactory::builder().build(); // the global registry
/// let shared = factory.create_manager(None, ManagerMode::Unified)?;
/// let alice = UserContext::new(UserId::new("alice")?);
/// let for_alice = factory.create_manager(Some(alice), ManagerMode::Isolated)?;
///
/// assert!(!factory.supports_user_isolation()); // not measured yet
/// factory.verify_isolation().await?;
/// assert!(factory.supports_user_isolation());
///
/// let result = factory.validate_manager_instance(&for_alice).await;
/// assert!(result.is_production_ready(), "{result}");
/// assert!(result.user_context_isolated);
/// assert!(!result.checks_skipped.is_empty()); // probes that would touch alice's sockets
/// # let _ = shared;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct StandardFactory {
    registry: Registry,
    config: ManagerConfig,
    extensions: Extensions,
    require_user_context: bool,
    chosen: BTreeMap<ManagerMode, String>,
    shared: Mutex<HashMap<&'static str, DynManager>>,
    isolation: AtomicU8,
}

impl std::fmt::Debug for StandardFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandardFactory")
            .field("registry", &self.registry)
            .field("config", &self.config)
            .field("extensions", &self.extensions)
            .field("require_user_context", &self.require_user_context)
            .field("chosen", &self.chosen)
            .field("supports_user_isolation", &self.supports_user_isolation())
            .finish_non_exhaustive()
    }
}

/// Configures a [`StandardFactory`].
#[derive(Debug)]
pub struct StandardFactoryBuilder {
    registry: Option<Registry>,
    config: ManagerConfig,
    extensions: Extensions,
    require_user_context: bool,
    chosen: BTreeMap<ManagerMode, String>,
}

impl StandardFactoryBuilder {
    /// The registry to build from (default: [`Registry::global`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The configuration handed to every constructor.
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// The application resources handed to every constructor.
    pub fn extensions(mut self, extensions: Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// Whether an isolated manager needs a [`UserContext`] (default `true`).
    pub fn require_user_context(mut self, required: bool) -> Self {
        self.require_user_context = required;
        self
    }

    /// Uses the manager registered as `name` for `mode`.
    pub fn use_manager(mut self, mode: ManagerMode, name: impl Into<String>) -> Self {
        self.chosen.insert(mode, name.into());
        self
    }

    /// The factory.
    pub fn build(self) -> StandardFactory {
        StandardFactory {
            registry: self.registry.unwrap_or_else(Registry::global),
            config: self.config,
            extensions: self.extensions,
            require_user_context: self.require_user_context,
            chosen: self.chosen,
            shared: Mutex::new(HashMap::new()),
            isolation: AtomicU8::new(ISOLATION_UNVERIFIED),
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section is a single insert or scan).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StandardFactory {
    /// A builder over [`Registry::global`], default configuration, no
    /// extensions, `require_user_context` on.
    pub fn builder() -> StandardFactoryBuilder {
        StandardFactoryBuilder {
            registry: None,
            config: ManagerConfig::default(),
            extensions: Extensions::new(),
            require_user_context: true,
            chosen: BTreeMap::new(),
        }
    }

    /// The registry the factory builds from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registration used for `mode`.
    ///
    /// # Errors
    ///
    /// [`FactoryError::Registry`], [`FactoryError::ModeMismatch`],
    /// [`FactoryError::NoManagerForMode`] or [`FactoryError::AmbiguousMode`].
    pub fn registration_for(&self, mode: ManagerMode) -> Result<&Registration, FactoryError> {
        if let Some(name) = self.chosen.get(&mode) {
            let registration = self.registry.get(name)?;
            if registration.mode != mode {
                return Err(FactoryError::ModeMismatch {
                    name: registration.name,
                    requested: mode,
                    actual: registration.mode,
                });
            }
            return Ok(registration);
        }
        let named_after_mode = self.registry.named(mode.as_str());
        if !named_after_mode.is_empty() {
            let registration = self.registry.get(mode.as_str())?;
            if registration.mode == mode {
                return Ok(registration);
            }
        }
        let candidates: Vec<&Registration> = self
            .registry
            .entries()
            .iter()
            .filter(|r| r.mode == mode)
            .collect();
        match candidates.as_slice() {
            [only] => Ok(only),
            [] => Err(FactoryError::NoManagerForMode {
                mode,
                registered: self.names(self.registry.entries().iter()),
            }),
            several => Err(FactoryError::AmbiguousMode {
                mode,
                candidates: self.names(several.iter().copied()),
            }),
        }
    }

    fn names<'a>(
        &self,
        registrations: impl Iterator<Item = &'a Registration>,
    ) -> Vec<&'static str> {
        registrations.map(|r| r.name).collect()
    }

    /// The manager registered as `name`: shared if it is unified, a new
    /// instance for `user_context` if it is isolated.
    ///
    /// # Errors
    ///
    /// As [`ManagerFactory::create_manager`].
    pub fn create_named(
        &self,
        name: &str,
        user_context: Option<UserContext>,
    ) -> Result<BuiltManager, FactoryError> {
        let registration = *self.registry.get(name)?;
        self.build(&registration, user_context)
    }

    fn build(
        &self,
        registration: &Registration,
        user_context: Option<UserContext>,
    ) -> Result<BuiltManager, FactoryError> {
        if !registration.matches_protocol() {
            return Err(FactoryError::ProtocolMismatch {
                name: registration.name,
                found: registration.fingerprint,
                expected: PROTOCOL_FINGERPRINT,
            });
        }
        let build_error = |source| FactoryError::Build {
            name: registration.name,
            source,
        };
        match registration.mode {
            ManagerMode::Unified => {
                // Built under the lock so that two first callers cannot build
                // two "shared" instances; constructors are synchronous.
                let mut shared = lock(&self.shared);
                let manager = match shared.get(registration.name) {
                    Some(existing) => existing.clone(),
                    None => {
                        let context = BuildContext::new(&self.config, &self.extensions);
                        let manager = registration.build(&context).map_err(build_error)?;
                        shared.insert(registration.name, manager.clone());
                        manager
                    }
                };
                Ok(BuiltManager {
                    manager,
                    registration: Some(*registration),
                })
            }
            ManagerMode::Isolated => {
                if user_context.is_none() && self.require_user_context {
                    return Err(FactoryError::MissingUserContext {
                        name: registration.name,
                    });
                }
                let mut context = BuildContext::new(&self.config, &self.extensions);
                if let Some(user_context) = &user_context {
                    context = context.with_user_context(user_context);
                }
                let manager = registration.build(&context).map_err(build_error)?;
                Ok(BuiltManager {
                    manager,
                    registration: Some(*registration),
                })
            }
        }
    }

    /// Runs both isolation probes on a fresh instance of the isolated
    /// manager (built for a synthetic user) and records the outcome that
    /// [`supports_user_isolation`](ManagerFactory::supports_user_isolation)
    /// reports. Returns the probe report.
    ///
    /// # Errors
    ///
    /// When no isolated manager can be chosen, or it was compiled against
    /// another contract; the outcome is then recorded as failed.
    pub async fn verify_isolation(&self) -> Result<ConformanceReport, FactoryError> {
        let registration = match self.registration_for(ManagerMode::Isolated) {
            Ok(registration) => *registration,
            Err(error) => {
                self.isolation.store(ISOLATION_FAILED, Ordering::Release);
                return Err(error);
            }
        };
        if !registration.matches_protocol() {
            self.isolation.store(ISOLATION_FAILED, Ordering::Release);
            return Err(FactoryError::ProtocolMismatch {
                name: registration.name,
                found: registration.fingerprint,
                expected: PROTOCOL_FINGERPRINT,
            });
        }
        let report = Conformance::new(ManagerMode::Isolated)
            .config(self.config.clone())
            .extensions(self.extensions.clone())
            .only([
                Check::IsolationRefusesConnections,
                Check::IsolationRefusesSends,
            ])
            .run(|context| registration.build(context))
            .await;
        let outcome = if report.passed() {
            ISOLATION_PASSED
        } else {
            ISOLATION_FAILED
        };
        self.isolation.store(outcome, Ordering::Release);
        Ok(report)
    }
}

#[async_trait::async_trait]
impl ManagerFactory for StandardFactory {
    fn create_manager(
        &self,
        user_context: Option<UserContext>,
        mode: ManagerMode,
    ) -> Result<BuiltManager, FactoryError> {
        let registration = *self.registration_for(mode)?;
        self.build(&registration, user_context)
    }

    async fn validate_manager_instance(&self, built: &BuiltManager) -> FactoryValidationResult {
        let registration = built.registration;
        let mut errors = Vec::new();
        let (manager_type, registry_name, mode, fingerprint_ok) = match &registration {
            Some(r) => {
                if !r.matches_protocol() {
                    errors.push(CheckFailure::new(
                        "protocol_fingerprint",
                        "registration",
                        format!("fingerprint {PROTOCOL_FINGERPRINT:016x}"),
                        format!("{:016x}", r.fingerprint),
                        "rebuild the manager against this version of websocket-manager",
                    ));
                }
                (
                    r.type_name.to_owned(),
                    Some(r.name.to_owned()),
                    Some(r.mode),
                    r.matches_protocol(),
                )
            }
            // The trait object implements this runtime's trait, so its
            // signatures match; its registration and mode are unknown.
            None => (
                "unknown (not built by this factory)".to_owned(),
                None,
                None,
                true,
            ),
        };
        let span = tracing::info_span!(
            "validate_manager_instance",
            manager = registry_name.as_deref().unwrap_or("unknown")
        );
        let live = Conformance::new(mode.unwrap_or(ManagerMode::Unified))
            .config(self.config.clone())
            .extensions(self.extensions.clone())
            .run_live(&built.manager)
            .instrument(span)
            .await;
        errors.extend(live.failures().into_iter().cloned());
        let mut skipped = live.skipped.clone();
        if mode.is_none() {
            skipped.extend(
                [
                    Check::IsolationRefusesConnections,
                    Check::IsolationRefusesSends,
                ]
                .map(|check| crate::conformance::SkippedCheck {
                    check,
                    reason: "the instance was not built by this factory, so its mode is unknown"
                        .to_owned(),
                }),
            );
        }
        let user_context_isolated = mode == Some(ManagerMode::Isolated)
            && live
                .outcome(Check::IsolationRefusesConnections)
                .is_some_and(|o| o.passed());
        FactoryValidationResult {
            is_valid: errors.is_empty(),
            interface_compliant: fingerprint_ok && live.passed(),
            validation_errors: errors,
            manager_type,
            registry_name,
            mode,
            user_context_isolated,
            factory_method_available: registration.is_some(),
            validated_at: SystemTime::now(),
            checks_run: live.outcomes.iter().map(|o| o.check).collect(),
            checks_skipped: skipped,
        }
    }

    fn supports_user_isolation(&self) -> bool {
        self.isolation.load(Ordering::Acquire) == ISOLATION_PASSED
            && self.registration_for(ManagerMode::Isolated).is_ok()
    }
}
