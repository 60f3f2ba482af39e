//! The `#[websocket_manager]` attribute of the `websocket-manager` crate.
//!
//! Depend on `websocket-manager` and use `websocket_manager::websocket_manager`;
//! this crate is its implementation. The entry points below are thin: the
//! work is in the private `expand` module, on `proc_macro2` token streams, so it
//! is unit-tested without a compiler.

mod args;
mod contract;
mod emit_contract;
mod expand;
mod hollow;
#[cfg(test)]
mod mutation_tests;
mod suggest;
mod types;
mod validate;

use proc_macro::TokenStream;

/// Checks an impl block against the `WebSocketManager` contract at compile
/// time and registers the manager. See the `websocket-manager` crate.
#[proc_macro_attribute]
pub fn websocket_manager(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

/// Put on the runtime's `WebSocketManager` trait:
/// fails the build when the trait and the contract this crate checks impls
/// against differ, and emits the method table and fingerprint beside it.
#[doc(hidden)]
#[proc_macro_attribute]
pub fn __contract(_attr: TokenStream, item: TokenStream) -> TokenStream {
    emit_contract::emit(item.into()).into()
}
