//! `__contract!`: the runtime's trait, method table and fingerprint, emitted
//! from the one contract source.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::Attribute;
use syn::parse::Parser;

use crate::contract::{Contract, GROUPS};

/// `input` is the trait's outer attributes (its documentation).
pub(crate) fn emit(input: TokenStream) -> TokenStream {
    match try_emit(input) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn try_emit(input: TokenStream) -> syn::Result<TokenStream> {
    let attrs = Attribute::parse_outer.parse2(input)?;
    let contract = Contract::load()?;
    let items = contract.methods.iter().map(|m| &m.item);
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
    Ok(quote! {
        #(#attrs)*
        #[diagnostic::on_unimplemented(
            message = "`{Self}` is not a WebSocket manager",
            label = "`{Self}` does not implement the `WebSocketManager` contract",
            note = "put `#[websocket_manager]` on `impl WebSocketManager for {Self} {{ ... }}` (the 11 contract methods), or on `impl {Self} {{ ... }}` if the type already has them"
        )]
        #[crate::__private::async_trait]
        pub trait WebSocketManager: Send + Sync + 'static {
            #(#items)*
        }

        /// The contract's methods, in order, generated from the same source
        /// as [`WebSocketManager`].
        pub const CONTRACT_METHODS: &[crate::protocol::MethodSpec; #count] = &[#(#specs),*];

        /// A hash of every contract signature. Each registration records the
        /// fingerprint it was checked against; startup validation compares it
        /// with this one.
        pub const PROTOCOL_FINGERPRINT: u64 = #fingerprint;
    })
}
