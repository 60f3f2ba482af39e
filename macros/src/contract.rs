//! The contract as this crate knows it.
//!
//! [`CONTRACT_SOURCE`] spells out the 11 methods for the macro: it is parsed
//! by syn into [`Contract`], and that one parse feeds every check
//! `#[websocket_manager]` makes, the runtime's method table and its
//! fingerprint. The trait users read is real source in the runtime
//! (`runtime/src/protocol.rs`, with the documentation); `#[__contract]` on
//! that trait compares it with this copy, signature by signature, whenever
//! the runtime is built, so the two cannot drift apart.
//!
//! Each method carries `#[contract(group = "...")]` and, for the two methods
//! whose absence crashed production, `critical`. Types are written as a user
//! would write them with `use websocket_manager::*;` in scope.

use proc_macro2::Span;
use syn::{FnArg, Ident, ItemTrait, ReturnType, Signature, TraitItem, TraitItemFn, Type};

use crate::types::{canonical, named_lifetimes, render_tokens};

/// The contract's signatures, in order; the documentation is on the
/// runtime's trait.
pub(crate) const CONTRACT_SOURCE: &str = r#"
#[contract(group = "connection_management")]
async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError>;

#[contract(group = "connection_management")]
async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;

#[contract(group = "connection_management")]
fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;

#[contract(group = "connection_management")]
fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId>;

#[contract(group = "connection_management")]
fn is_connection_active(&self, user_id: &UserId) -> bool;

#[contract(group = "critical", critical)]
fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId>;

#[contract(group = "critical", critical)]
fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool;

#[contract(group = "messaging")]
async fn send_to_user(&self, user_id: &UserId, message: serde_json::Value) -> Result<Delivery, ManagerError>;

#[contract(group = "messaging")]
async fn emit_critical_event(&self, user_id: &UserId, event_type: &str, data: serde_json::Value) -> Result<Delivery, ManagerError>;

#[contract(group = "health")]
fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth;

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

/// What every expansion needs of the contract, span-free so that it can be
/// computed once per compiler process (syn items hold spans, which are only
/// valid during the expansion that made them): parsing the contract text was
/// the largest part of the attribute's own time.
pub(crate) struct Facts {
    /// [`Contract::fingerprint`].
    pub fingerprint: u64,
    /// [`signature_key`] of each method, in contract order.
    pub keys: Vec<String>,
}

impl Facts {
    /// The facts of [`CONTRACT_SOURCE`], parsed on the first call only.
    pub fn get() -> syn::Result<&'static Facts> {
        static FACTS: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
        if let Some(facts) = FACTS.get() {
            return Ok(facts);
        }
        let contract = Contract::load()?;
        let keys = contract
            .methods
            .iter()
            .map(|method| {
                signature_key(&method.item.sig).ok_or_else(|| {
                    syn::Error::new(
                        Span::call_site(),
                        format!("contract method `{}` has no signature key", method.name()),
                    )
                })
            })
            .collect::<syn::Result<Vec<String>>>()?;
        Ok(FACTS.get_or_init(|| Facts {
            fingerprint: contract.fingerprint(),
            keys,
        }))
    }
}

/// A signature reduced to what the checks compare: asyncness, name, a
/// plain `&self`, and the parameter and return types in their
/// [`canonical`] form. `None` for anything that needs a closer look (const,
/// unsafe, an ABI, generics, a `where` clause, named lifetimes, another
/// receiver...). A method whose key equals its contract entry's is one the
/// checks accept, so an impl of only such methods skips them.
pub(crate) fn signature_key(sig: &Signature) -> Option<String> {
    if sig.constness.is_some()
        || !matches!(sig.safety, syn::Safety::Default)
        || sig.abi.is_some()
        || !sig.generics.params.is_empty()
        || sig.generics.where_clause.is_some()
        || sig.variadic.is_some()
    {
        return None;
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if matches!(receiver.kind, syn::ReceiverKind::Reference(_, None, None)) => {}
        _ => return None,
    }
    let mut key = String::new();
    if sig.asyncness.is_some() {
        key.push_str("async ");
    }
    key.push_str(&sig.ident.to_string());
    key.push_str("(&self");
    for input in inputs {
        let FnArg::Typed(param) = input else {
            return None;
        };
        if !named_lifetimes(&param.ty).is_empty() {
            return None;
        }
        key.push_str(", ");
        key.push_str(&canonical(&param.ty));
    }
    key.push(')');
    if let ReturnType::Type(_, ty) = &sig.output {
        if !named_lifetimes(ty).is_empty() {
            return None;
        }
        key.push_str(" -> ");
        key.push_str(&canonical(ty));
    }
    Some(key)
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
