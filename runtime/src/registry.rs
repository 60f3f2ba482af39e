//! Every manager annotated with `#[websocket_manager]`, collected at link
//! time through `inventory`.
//!
//! **Linkage rule.** A crate that nothing in the final binary references is
//! not linked, and its registrations vanish without a word. If your managers
//! live in their own crate, reference it from the binary:
//! `use my_managers as _;`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::config::{ConfigError, ManagerConfig};
use crate::context::{ManagerMode, UserContext};
use crate::dyn_manager::DynManager;
use crate::extensions::Extensions;
use crate::protocol::WebSocketManager;

/// How the factory builds a registered manager.
pub type Constructor = fn(&BuildContext<'_>) -> Result<DynManager, BuildError>;

/// One registered manager, written by `#[websocket_manager]`.
///
/// Tests can describe one by hand with [`Registration::new`] (a simulated
/// manager compiled against another contract, say); the fields are public to
/// read and to adjust, and new ones may be added in minor releases.
///
/// ```
/// use websocket_manager::startup::{ManagerMode, Registration};
/// let registration = Registration::new("mine", "MyManager", ManagerMode::Unified, None)
///     .at("my_crate::managers", "src/managers.rs", 42);
/// assert_eq!(registration.location(), "src/managers.rs:42");
/// assert!(!registration.is_buildable());
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Registration {
    /// The registry name (`name = "..."`, default the type's name).
    pub name: &'static str,
    /// The Rust type, as written in the impl.
    pub type_name: &'static str,
    /// The module that holds the impl.
    pub module_path: &'static str,
    /// Source file of the annotated impl.
    pub file: &'static str,
    /// Source line of the annotated impl.
    pub line: u32,
    /// How the manager is meant to be shared.
    pub mode: ManagerMode,
    /// The [`PROTOCOL_FINGERPRINT`](crate::protocol::PROTOCOL_FINGERPRINT) the manager
    /// was checked against.
    pub fingerprint: u64,
    /// How to build it; `None` for a manager registered with
    /// `#[websocket_manager(factory = false)]`.
    pub constructor: Option<Constructor>,
}

inventory::collect!(Registration);

/// `file` from its crate's folder on when it is absolute (the crate was
/// built outside the workspace): the folder that holds its `src`.
fn readable_path(file: &str) -> &str {
    if !std::path::Path::new(file).is_absolute() {
        return file;
    }
    let Some(src) = file.rfind("/src/") else {
        return file;
    };
    match file[..src].rfind('/') {
        Some(crate_dir) => &file[crate_dir + 1..],
        None => file,
    }
}

impl Registration {
    /// A registration of `type_name` under `name`, checked against this
    /// crate's [`PROTOCOL_FINGERPRINT`](crate::protocol::PROTOCOL_FINGERPRINT), with no
    /// location (see [`at`](Self::at)).
    pub const fn new(
        name: &'static str,
        type_name: &'static str,
        mode: ManagerMode,
        constructor: Option<Constructor>,
    ) -> Self {
        Registration {
            name,
            type_name,
            module_path: "",
            file: "",
            line: 0,
            mode,
            fingerprint: crate::protocol::PROTOCOL_FINGERPRINT,
            constructor,
        }
    }

    /// The same, located at `file:line` in `module_path`.
    #[must_use]
    pub const fn at(mut self, module_path: &'static str, file: &'static str, line: u32) -> Self {
        self.module_path = module_path;
        self.file = file;
        self.line = line;
        self
    }

    /// The same, checked against `fingerprint` (what the generated code
    /// records; a test can simulate a manager built against another
    /// contract).
    #[must_use]
    pub const fn with_fingerprint(mut self, fingerprint: u64) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// `file:line` of the annotated impl, as a reader finds it: relative to
    /// the workspace for a crate of your own, and from the crate's folder
    /// for one built elsewhere (a dependency from crates.io or git, whose
    /// `file!()` is absolute): `websocket-manager-0.1.0/src/managers/unified.rs:189`
    /// rather than the whole path into `~/.cargo/registry`.
    ///
    /// ```
    /// use websocket_manager::startup::{ManagerMode, Registration};
    /// let mut registration = Registration::new("mine", "Mine", ManagerMode::Unified, None);
    /// registration.file = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/my-managers-1.2.0/src/lib.rs";
    /// registration.line = 7;
    /// assert_eq!(registration.location(), "my-managers-1.2.0/src/lib.rs:7");
    /// registration.file = "examples/startup.rs"; // inside the workspace: as it is
    /// assert_eq!(registration.location(), "examples/startup.rs:7");
    /// ```
    pub fn location(&self) -> String {
        format!("{}:{}", readable_path(self.file), self.line)
    }

    /// Whether the factory can build it.
    pub fn is_buildable(&self) -> bool {
        self.constructor.is_some()
    }

    /// Whether it was checked against the contract this runtime defines.
    pub fn matches_protocol(&self) -> bool {
        self.fingerprint == crate::protocol::PROTOCOL_FINGERPRINT
    }

    /// Builds the manager.
    ///
    /// # Errors
    ///
    /// [`BuildError::NotBuildable`] for a `factory = false` manager, or
    /// whatever its constructor reports.
    pub fn build(&self, context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
        match self.constructor {
            Some(constructor) => constructor(context),
            None => Err(BuildError::NotBuildable { name: self.name }),
        }
    }
}

impl Serialize for Registration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Registration", 8)?;
        s.serialize_field("name", self.name)?;
        s.serialize_field("type_name", self.type_name)?;
        s.serialize_field("module_path", self.module_path)?;
        s.serialize_field("location", &self.location())?;
        s.serialize_field("mode", &self.mode)?;
        s.serialize_field("fingerprint", &format!("{:016x}", self.fingerprint))?;
        s.serialize_field("protocol_matches", &self.matches_protocol())?;
        s.serialize_field("buildable", &self.is_buildable())?;
        s.end()
    }
}

/// Everything a constructor may need, handed over by the factory.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BuildContext<'a> {
    /// The user an isolated manager is built for; `None` for a shared one.
    pub user_context: Option<&'a UserContext>,
    /// Queue bounds and policies.
    pub config: &'a ManagerConfig,
    /// Application resources (pools, buses...).
    pub extensions: &'a Extensions,
    /// Whether the instance is built for behavioural probes (startup
    /// validation, the conformance kit) rather than to serve users: the
    /// probes provoke refusals on purpose, so a manager may log those
    /// quietly.
    pub for_probe: bool,
}

impl<'a> BuildContext<'a> {
    /// A context with no user.
    pub fn new(config: &'a ManagerConfig, extensions: &'a Extensions) -> Self {
        BuildContext {
            user_context: None,
            config,
            extensions,
            for_probe: false,
        }
    }

    /// The same context, marked as built for the probes.
    pub fn for_probe(mut self) -> Self {
        self.for_probe = true;
        self
    }

    /// The same context for one user.
    pub fn with_user_context(mut self, user_context: &'a UserContext) -> Self {
        self.user_context = Some(user_context);
        self
    }

    /// The user context, or [`BuildError::MissingUserContext`].
    ///
    /// # Errors
    ///
    /// When the factory was asked for this manager without a user context.
    pub fn require_user_context(&self) -> Result<&'a UserContext, BuildError> {
        self.user_context.ok_or(BuildError::MissingUserContext)
    }

    /// The extension of type `T`, or [`BuildError::MissingExtension`].
    ///
    /// # Errors
    ///
    /// When the application did not provide a `T`.
    pub fn require_extension<T: Send + Sync + 'static>(&self) -> Result<&'a T, BuildError> {
        self.extensions
            .get::<T>()
            .ok_or(BuildError::MissingExtension {
                type_name: std::any::type_name::<T>(),
            })
    }
}

/// A manager could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The manager needs a [`UserContext`] and none was given.
    #[error("this manager needs a user context and none was given")]
    MissingUserContext,
    /// The manager needs an application resource that is not in the
    /// [`Extensions`].
    #[error(
        "this manager needs the application resource `{type_name}`; add it to the factory's extensions"
    )]
    MissingExtension {
        /// The missing type.
        type_name: &'static str,
    },
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The manager was registered with `factory = false`.
    #[error(
        "manager `{name}` was registered with `factory = false` and cannot be built by the factory"
    )]
    NotBuildable {
        /// The registry name.
        name: &'static str,
    },
    /// The constructor failed for its own reason.
    #[error("constructor failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// How the factory builds a manager type. `#[websocket_manager]` registers
/// `T::construct` as the constructor.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be built by the factory",
    label = "`{Self}` does not implement `ConstructManager`",
    note = "implement `websocket_manager::startup::ConstructManager` for `{Self}`, or register it without a constructor with `#[websocket_manager(factory = false)]`"
)]
pub trait ConstructManager: WebSocketManager + Sized {
    /// Builds one instance.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] saying what was missing or failed.
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError>;
}

/// Builds a `T` as a [`DynManager`]: the constructor
/// `#[websocket_manager]` registers for `T`.
///
/// ```
/// use websocket_manager::{WebSocketManager, managers::{ManagerConfig, UnifiedWebSocketManager}, startup::{BuildContext, Extensions, construct}};
/// let (config, extensions) = (ManagerConfig::default(), Extensions::new());
/// let manager = construct::<UnifiedWebSocketManager>(&BuildContext::new(&config, &extensions)).unwrap();
/// assert!(manager.get_user_connections(&websocket_manager::UserId::new("alice").unwrap()).is_empty());
/// ```
///
/// # Errors
///
/// What `T::construct` returns.
pub fn construct<T: ConstructManager>(
    context: &BuildContext<'_>,
) -> Result<DynManager, BuildError> {
    T::construct(context).map(DynManager::new)
}

/// Two or more registrations share a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateName {
    /// The shared name.
    pub name: &'static str,
    /// `type at file:line` for each of them.
    pub registrations: Vec<String>,
}

/// The registry is not usable as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Registry names must be unique; none silently wins.
    #[error("manager name `{}` is registered {} times: {}", .0.name, .0.registrations.len(), .0.registrations.join(", "))]
    DuplicateName(DuplicateName),
    /// No manager has that name.
    #[error("no manager named `{name}` is registered (registered: {})", names_or_none(.known))]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The registered names, sorted.
        known: Vec<&'static str>,
    },
}

/// `a, b, c`, or `none`: for error messages that list names.
pub(crate) fn names_or_none(names: &[&'static str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A snapshot of registered managers, sorted by name (then type).
///
/// ```
/// let registry = websocket_manager::startup::Registry::global();
/// for registration in registry.entries() {
///     println!("{} ({}) at {}", registration.name, registration.mode, registration.location());
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Registration>,
}

impl Registry {
    /// Every manager registered through `#[websocket_manager]` in the linked
    /// crates.
    pub fn global() -> Registry {
        Registry::from_entries(inventory::iter::<Registration>.into_iter().copied())
    }

    /// A registry of the given entries (for tests, or to narrow the global one).
    pub fn from_entries(entries: impl IntoIterator<Item = Registration>) -> Registry {
        let mut entries: Vec<Registration> = entries.into_iter().collect();
        entries.sort_by(|a, b| {
            (a.name, a.type_name, a.file, a.line).cmp(&(b.name, b.type_name, b.file, b.line))
        });
        Registry { entries }
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[Registration] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries registered with `name`.
    pub fn named(&self, name: &str) -> Vec<&Registration> {
        self.entries.iter().filter(|r| r.name == name).collect()
    }

    /// The only entry named `name`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownName`] when there is none,
    /// [`RegistryError::DuplicateName`] when there are several.
    pub fn get(&self, name: &str) -> Result<&Registration, RegistryError> {
        match self.named(name).as_slice() {
            [only] => Ok(only),
            [] => Err(RegistryError::UnknownName {
                name: name.to_owned(),
                known: self.entries.iter().map(|r| r.name).collect(),
            }),
            _ => Err(RegistryError::DuplicateName(
                self.duplicate_names()
                    .into_iter()
                    .find(|d| d.name == name)
                    .unwrap_or(DuplicateName {
                        name: "",
                        registrations: Vec::new(),
                    }),
            )),
        }
    }

    /// Every name registered more than once.
    pub fn duplicate_names(&self) -> Vec<DuplicateName> {
        let mut by_name: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for r in &self.entries {
            by_name
                .entry(r.name)
                .or_default()
                .push(format!("{} at {}", r.type_name, r.location()));
        }
        by_name
            .into_iter()
            .filter(|(_, regs)| regs.len() > 1)
            .map(|(name, registrations)| DuplicateName {
                name,
                registrations,
            })
            .collect()
    }

    /// `Ok` when every name is unique.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DuplicateName`] for the first duplicated name.
    pub fn validate_unique(&self) -> Result<(), RegistryError> {
        match self.duplicate_names().into_iter().next() {
            Some(duplicate) => Err(RegistryError::DuplicateName(duplicate)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Registry {
    /// An aligned table: name, mode, type, location, buildable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 5]> = self
            .entries
            .iter()
            .map(|r| {
                [
                    r.name.to_owned(),
                    r.mode.to_string(),
                    r.type_name.to_owned(),
                    r.location(),
                    if r.is_buildable() {
                        "yes"
                    } else {
                        "no (factory = false)"
                    }
                    .to_owned(),
                ]
            })
            .collect();
        crate::table::lines(f, |f| {
            crate::table::write_table(f, &["NAME", "MODE", "TYPE", "LOCATION", "BUILDABLE"], &rows)
        })
    }
}

impl Serialize for Registry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(serializer)
    }
}
