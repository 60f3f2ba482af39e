//! `#[__contract]`: proves the runtime's hand-written `WebSocketManager`
//! trait is the contract this crate checks impls against, and emits the
//! method table and fingerprint next to it.
//!
//! The trait is real Rust source in `runtime/src/protocol.rs` (so
//! go-to-definition, rustdoc's [src] and rustc's notes land on readable
//! code). This crate needs its own copy of the contract ([`CONTRACT_SOURCE`](
//! crate::contract::CONTRACT_SOURCE)) because it checks impls in crates that
//! never see the runtime's source. The trait writes each async method as
//! `fn name(..) -> impl Future<Output = T> + Send` (the `Send` bound a bare
//! `async fn` in a trait lacks), which is compared as the copy's
//! `async fn name(..) -> T`; any other drift, method by method, fails the
//! runtime's own build.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    GenericArgument, ItemTrait, PathArguments, ReturnType, Signature, TraitItem, Type,
    TypeParamBound,
};

use crate::contract::{Contract, GROUPS};
use crate::types::render_tokens;

/// `item` is the trait as written in the runtime; it is emitted unchanged.
pub(crate) fn emit(item: TokenStream) -> TokenStream {
    let tokens = match syn::parse2::<ItemTrait>(item.clone()) {
        Ok(item_trait) => match Contract::load() {
            Ok(contract) => {
                let mismatches = mismatches(&item_trait, &contract);
                if mismatches.is_empty() {
                    table(&contract)
                } else {
                    mismatches
                        .iter()
                        .map(syn::Error::to_compile_error)
                        .collect()
                }
            }
            Err(error) => error.to_compile_error(),
        },
        Err(error) => error.to_compile_error(),
    };
    quote! {
        #item
        #tokens
    }
}

/// Every difference between the trait as written and the contract, each
/// spanned on the trait's own tokens.
pub(crate) fn mismatches(item: &ItemTrait, contract: &Contract) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    let mut written = Vec::new();
    for entry in &item.items {
        match entry {
            TraitItem::Fn(method) => written.push(method),
            other => errors.push(syn::Error::new(
                other.span(),
                "the contract declares methods only; this item is not in `macros/src/contract.rs`",
            )),
        }
    }
    for (index, method) in contract.methods.iter().enumerate() {
        let expected = method.signature();
        match written.get(index) {
            Some(found) => {
                let sig = &found.sig;
                if sig.asyncness.is_some() {
                    errors.push(syn::Error::new(
                        sig.ident.span(),
                        "write the trait's async methods as `fn name(..) -> impl Future<Output = T> + Send`: a bare `async fn` in a trait promises no `Send` future",
                    ));
                    continue;
                }
                // rustfmt's trailing comma after a long parameter list is
                // not a difference
                let mut unpunctuated = as_async(sig);
                unpunctuated.inputs = sig.inputs.iter().cloned().collect();
                let found_text = render_tokens(&unpunctuated.to_token_stream());
                if found_text != expected {
                    errors.push(syn::Error::new(
                        sig.ident.span(),
                        format!(
                            "method {} of the trait differs from the contract in `macros/src/contract.rs`:\n  contract: {expected}\n  trait:    {found_text}",
                            index + 1
                        ),
                    ));
                }
            }
            None => errors.push(syn::Error::new(
                item.ident.span(),
                format!("the trait lacks the contract's `{expected}`"),
            )),
        }
    }
    for extra in written.iter().skip(contract.methods.len()) {
        errors.push(syn::Error::new(
            extra.sig.ident.span(),
            "this method is not in the contract (`macros/src/contract.rs`)",
        ));
    }
    if errors.is_empty() && item.ident != "WebSocketManager" {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`#[__contract]` belongs on `trait WebSocketManager` only",
        ));
    }
    errors
}

/// `fn f(..) -> impl Future<Output = T> + Send` as the contract writes it,
/// `async fn f(..) -> T`; any other signature unchanged.
fn as_async(sig: &Signature) -> Signature {
    let mut sig = sig.clone();
    if let ReturnType::Type(_, ty) = &sig.output
        && let Type::ImplTrait(bounds) = &**ty
        && let [TypeParamBound::Trait(future), TypeParamBound::Trait(send)] =
            bounds.bounds.iter().collect::<Vec<_>>()[..]
        && send.path.is_ident("Send")
        && let Some(last) = future.path.segments.last()
        && last.ident == "Future"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let [GenericArgument::AssocType(output)] = &args.args.iter().collect::<Vec<_>>()[..]
        && output.ident == "Output"
    {
        let output_ty = output.ty.clone();
        sig.asyncness = Some(Default::default());
        sig.output = match &output_ty {
            Type::Tuple(unit) if unit.elems.is_empty() => ReturnType::Default,
            _ => ReturnType::Type(Default::default(), Box::new(output_ty)),
        };
    }
    sig
}

/// `CONTRACT_METHODS` and `PROTOCOL_FINGERPRINT`.
fn table(contract: &Contract) -> TokenStream {
    let specs = contract.methods.iter().map(|method| {
        let name = method.name();
        let variant = GROUPS
            .iter()
            .find(|(group, _)| *group == method.group)
            .map(|(_, variant)| format_ident!("{}", variant));
        let is_async = method.is_async();
        let critical = method.critical;
        let signature = method.signature();
        quote! {
            crate::protocol::MethodSpec {
                name: #name,
                group: crate::protocol::MethodGroup::#variant,
                is_async: #is_async,
                critical: #critical,
                signature: #signature,
            }
        }
    });
    let fingerprint = Literal::u64_suffixed(contract.fingerprint());
    let count = contract.methods.len();
    quote! {
        /// The contract's methods, in order, generated from the contract
        /// `#[websocket_manager]` checks against (proven identical to
        /// [`WebSocketManager`] when this crate is built).
        pub const CONTRACT_METHODS: &[crate::protocol::MethodSpec; #count] = &[#(#specs),*];

        /// A hash of every contract signature. Each registration records the
        /// fingerprint it was checked against; startup validation compares it
        /// with this one.
        pub const PROTOCOL_FINGERPRINT: u64 = #fingerprint;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract as a trait, written the way `runtime/src/protocol.rs`
    /// writes it.
    fn contract_as_trait(contract: &Contract) -> String {
        let methods: String = contract
            .methods
            .iter()
            .map(|m| format!("{};\n", desugared(&m.signature())))
            .collect();
        format!("pub trait WebSocketManager: Send {{ {methods} }}")
    }

    /// `async fn f(..) -> T` as the trait writes it.
    fn desugared(signature: &str) -> String {
        match signature.strip_prefix("async ") {
            Some(rest) => match rest.split_once(") -> ") {
                Some((head, output)) => {
                    format!("{head}) -> impl Future<Output = {output}> + Send")
                }
                None => format!("{rest} -> impl Future<Output = ()> + Send"),
            },
            None => signature.to_owned(),
        }
    }

    #[test]
    fn the_contract_itself_passes() {
        let contract = Contract::load().unwrap();
        let item: ItemTrait = syn::parse_str(&contract_as_trait(&contract)).unwrap();
        assert!(mismatches(&item, &contract).is_empty());
        let out = emit(item.to_token_stream()).to_string();
        assert!(out.contains("PROTOCOL_FINGERPRINT"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn drift_in_a_type_an_order_or_a_method_fails_the_build() {
        let contract = Contract::load().unwrap();
        let source = contract_as_trait(&contract);
        let changed_type =
            source.replace("thread_id: ThreadId) -> bool", "thread_id: ThreadId) -> u8");
        let dropped = source.replace(
            "fn is_connection_active(&self, user_id: &UserId) -> bool;",
            "",
        );
        let added = source.replace("Send {", "Send { fn extra(&self);");
        for (case, expected) in [
            (changed_type, "method 7 of the trait differs"),
            (dropped, "the trait lacks the contract's"),
            (added, "method 1 of the trait differs"),
            (
                source.replace("+ Send;", ";"),
                "method 1 of the trait differs",
            ),
            (
                source.replacen(
                    "fn add_connection(&self, connection: WebSocketConnection) -> impl Future<Output = Result<(), ManagerError>> + Send;",
                    "async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError>;",
                    1,
                ),
                "a bare `async fn` in a trait promises no `Send` future",
            ),
        ] {
            let item: ItemTrait = syn::parse_str(&case).unwrap();
            let errors = mismatches(&item, &contract);
            assert!(
                errors.iter().any(|e| e.to_string().contains(expected)),
                "{case}: {:?}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
            let out = emit(item.to_token_stream()).to_string();
            assert!(out.contains("compile_error"), "{out}");
            assert!(!out.contains("PROTOCOL_FINGERPRINT"), "{out}");
        }
    }
}
