//! The contract, written down once.
//!
//! [`CONTRACT_SOURCE`] is the only place the 11 methods are spelled out. It is
//! parsed by syn into [`Contract`], and that one parse feeds everything:
//! the trait the runtime emits (`__contract!`), the runtime's method table
//! and fingerprint, and every check `#[websocket_manager]` makes.
//!
//! Each method carries `#[contract(group = "...")]` and, for the two methods
//! whose absence crashed production, `critical`. Types are written as a user
//! would write them with `use websocket_manager::*;` in scope.

use proc_macro2::Span;
use syn::{FnArg, Ident, ItemTrait, ReturnType, TraitItem, TraitItemFn, Type};

use crate::types::render_tokens;

/// The contract's source text.
pub(crate) const CONTRACT_SOURCE: &str = r#"
/// Registers a new connection.
///
/// Fails without registering anything when the connection id or the socket
/// is already registered, or the user is at the per-user connection cap.
/// Critical events kept for the user while they were offline are replayed
/// on the new connection, in order, before anything newer.
#[contract(group = "connection_management")]
async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError>;

/// Removes a connection from every index and closes its socket.
///
/// Returns the removed connection, or `None` for an unknown id.
#[contract(group = "connection_management")]
async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;

/// The connection registered under `connection_id`, if any.
#[contract(group = "connection_management")]
fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;

/// The ids of every connection of `user_id` (empty for an unknown user).
#[contract(group = "connection_management")]
fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId>;

/// Whether `user_id` has at least one open connection.
#[contract(group = "connection_management")]
fn is_connection_active(&self, user_id: &UserId) -> bool;

/// The id of the connection that owns `websocket`, found by the socket's
/// identity ([`SocketId`](crate::SocketId)).
///
/// Critical: its absence from one manager crashed production; agent code
/// calls it on every run to find which connection a socket belongs to.
#[contract(group = "critical", critical)]
fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId>;

/// Binds a connection to a thread, so `send_to_thread` reaches it.
///
/// Returns `false` for an unknown connection. Critical: the companion of
/// `get_connection_id_by_websocket`.
#[contract(group = "critical", critical)]
fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool;

/// Sends a JSON message to every connection of `user_id`.
///
/// At most once: a user with no deliverable connection gets
/// `ManagerError::NotDelivered`, never a silent success, and the message is
/// not kept.
#[contract(group = "messaging")]
async fn send_to_user(&self, user_id: &UserId, message: serde_json::Value) -> Result<Delivery, ManagerError>;

/// Sends a critical agent event (`agent_started`, `agent_thinking`,
/// `tool_executing`, `tool_completed`, `agent_completed`...) to `user_id`.
///
/// Never lost silently: when the user has no deliverable connection the event
/// is kept and replayed on their next connection (`Delivery::Queued`), or the
/// caller gets an error.
#[contract(group = "messaging")]
async fn emit_critical_event(&self, user_id: &UserId, event_type: &str, data: serde_json::Value) -> Result<Delivery, ManagerError>;

/// Connections, counters and pending events of `user_id`.
#[contract(group = "health")]
fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth;

/// Sends a JSON message to exactly the connections bound to `thread_id`.
#[contract(group = "compatibility")]
async fn send_to_thread(&self, thread_id: &ThreadId, message: serde_json::Value) -> Result<Delivery, ManagerError>;
"#;

/// The group names the contract source may use, and the runtime's
/// `MethodGroup` variant each maps to.
pub(crate) const GROUPS: &[(&str, &str)] = &[
    ("connection_management", "ConnectionManagement"),
    ("critical", "Critical"),
    ("messaging", "Messaging"),
    ("health", "Health"),
    ("compatibility", "Compatibility"),
];

/// One method of the contract.
pub(crate) struct ContractMethod {
    /// The method as written, without its `#[contract]` attribute.
    pub item: TraitItemFn,
    pub group: &'static str,
    pub critical: bool,
}

impl ContractMethod {
    pub fn name(&self) -> String {
        self.item.sig.ident.to_string()
    }

    pub fn ident(&self) -> &Ident {
        &self.item.sig.ident
    }

    pub fn is_async(&self) -> bool {
        self.item.sig.asyncness.is_some()
    }

    /// The typed parameters after `&self`, as (name, type).
    pub fn params(&self) -> Vec<(&Ident, &Type)> {
        self.item
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Typed(pat) => match &*pat.pat {
                    syn::Pat::Ident(p) => Some((&p.ident, &*pat.ty)),
                    _ => None,
                },
                FnArg::Receiver(_) => None,
            })
            .collect()
    }

    pub fn output(&self) -> Option<&Type> {
        match &self.item.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(ty),
        }
    }

    /// The signature as text: `async fn name(&self, a: &A) -> R`.
    pub fn signature(&self) -> String {
        let sig = &self.item.sig;
        render_tokens(&quote::quote!(#sig))
    }
}

/// The parsed contract.
pub(crate) struct Contract {
    pub methods: Vec<ContractMethod>,
}

impl Contract {
    /// Parses [`CONTRACT_SOURCE`].
    pub fn load() -> syn::Result<Contract> {
        let wrapped = format!("trait __Contract {{ {CONTRACT_SOURCE} }}");
        let item: ItemTrait = syn::parse_str(&wrapped)?;
        let mut methods = Vec::new();
        for entry in item.items {
            let TraitItem::Fn(mut item) = entry else {
                return Err(syn::Error::new(
                    Span::call_site(),
                    "the contract may only declare methods",
                ));
            };
            let mut group = None;
            let mut critical = false;
            let mut error = None;
            item.attrs.retain(|attr| {
                if !attr.path().is_ident("contract") {
                    return true;
                }
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("critical") {
                        critical = true;
                        Ok(())
                    } else if meta.path.is_ident("group") {
                        let value: syn::LitStr = meta.value()?.parse()?;
                        group = GROUPS
                            .iter()
                            .find(|(name, _)| *name == value.value())
                            .map(|(name, _)| *name);
                        Ok(())
                    } else {
                        Err(meta.error("unknown contract attribute"))
                    }
                });
                if let Err(e) = parsed {
                    error = Some(e);
                }
                false
            });
            if let Some(error) = error {
                return Err(error);
            }
            let Some(group) = group else {
                return Err(syn::Error::new(
                    item.sig.ident.span(),
                    "contract method without a known group",
                ));
            };
            methods.push(ContractMethod {
                item,
                group,
                critical,
            });
        }
        Ok(Contract { methods })
    }

    #[cfg(test)]
    pub fn method(&self, name: &str) -> Option<&ContractMethod> {
        self.methods.iter().find(|m| m.ident() == name)
    }

    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.methods.iter().map(ContractMethod::name)
    }

    /// FNV-1a over every signature, in order: changes whenever a method is
    /// added, removed, renamed, reordered or changes type or asyncness.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for method in &self.methods {
            for byte in method.signature().bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_parses_into_eleven_methods() {
        let contract = Contract::load().unwrap();
        assert_eq!(contract.methods.len(), 11);
        let critical: Vec<_> = contract
            .methods
            .iter()
            .filter(|m| m.critical)
            .map(ContractMethod::name)
            .collect();
        assert_eq!(
            critical,
            ["get_connection_id_by_websocket", "update_connection_thread"]
        );
        assert!(
            contract.methods.iter().all(|m| !m
                .item
                .attrs
                .iter()
                .any(|a| a.path().is_ident("contract")))
        );
    }

    #[test]
    fn signatures_render_like_source() {
        let contract = Contract::load().unwrap();
        assert_eq!(
            contract
                .method("update_connection_thread")
                .unwrap()
                .signature(),
            "fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool"
        );
        assert_eq!(
            contract.method("add_connection").unwrap().signature(),
            "async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError>"
        );
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let contract = Contract::load().unwrap();
        let before = contract.fingerprint();
        assert_eq!(before, Contract::load().unwrap().fingerprint());
        let mut changed = Contract::load().unwrap();
        changed.methods.pop();
        assert_ne!(before, changed.fingerprint());
    }
}
