//! The checks: an impl block against the contract. Every problem becomes a
//! `syn::Error` spanned on the user's own tokens; all of them are returned.

use std::collections::HashSet;

use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, ImplItem, ImplItemFn, ItemImpl, ReturnType, Signature};

use crate::args::Args;
use crate::contract::{Contract, ContractMethod, signature_key};
use crate::suggest::closest;
use crate::types::{canonical, compared_by_name_note, named_lifetimes, render_tokens, render_type};

/// Which of the two accepted forms the impl block is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Form {
    /// `impl WebSocketManager for T { ... }`
    TraitImpl,
    /// `impl T { ... }`: the methods are `T`'s own API.
    Inherent,
}

/// The outcome of the checks.
pub(crate) struct Checked<'a> {
    /// For each contract method, in contract order: the user's method when it
    /// is present and matches.
    pub valid: Vec<Option<&'a ImplItemFn>>,
    pub errors: Vec<syn::Error>,
}

pub(crate) fn check<'a>(
    item: &'a ItemImpl,
    form: Form,
    contract: &Contract,
    args: &Args,
) -> Checked<'a> {
    let mut errors = Vec::new();
    let mut valid: Vec<Option<&ImplItemFn>> = vec![None; contract.methods.len()];
    let mut present = vec![false; contract.methods.len()];
    let self_ty = render_type(&item.self_ty);

    check_impl_header(item, form, args, &self_ty, &mut errors);

    if let Some(error) = async_trait_already_applied(item) {
        errors.push(error);
        return Checked { valid, errors };
    }

    let mut seen = HashSet::new();
    for impl_item in &item.items {
        match impl_item {
            ImplItem::Fn(function) => {
                let name = function.sig.ident.to_string();
                match contract.methods.iter().position(|m| m.ident() == &name) {
                    Some(index) => {
                        // `#[cfg]` variants of one method are alternatives,
                        // not duplicates; each is still checked
                        let conditional = function.attrs.iter().any(|a| a.path().is_ident("cfg"));
                        if !conditional && !seen.insert(name.clone()) {
                            errors.push(syn::Error::new(
                                function.sig.ident.span(),
                                format!(
                                    "`{name}` is defined more than once in this impl; keep one"
                                ),
                            ));
                            continue;
                        }
                        present[index] = true;
                        let method_errors = check_method(function, &contract.methods[index]);
                        if method_errors.is_empty() && valid[index].is_none() {
                            valid[index] = Some(function);
                        }
                        errors.extend(method_errors);
                    }
                    None if form == Form::TraitImpl => {
                        errors.push(unknown_method(function, contract));
                    }
                    None => {}
                }
            }
            other if form == Form::TraitImpl => {
                if let Some(error) = foreign_item(other) {
                    errors.push(error);
                }
            }
            _ => {}
        }
    }

    let missing: Vec<&ContractMethod> = contract
        .methods
        .iter()
        .zip(&present)
        .filter(|(_, present)| !**present)
        .map(|(method, _)| method)
        .collect();
    if !missing.is_empty() {
        errors.insert(
            0,
            missing_methods(item, &self_ty, &missing, contract.methods.len()),
        );
    }
    Checked { valid, errors }
}

/// Whether a trait impl passes every check without consulting the parsed
/// contract: its header is fine and its methods are exactly the contract's,
/// each once, by [`signature_key`] (and nothing else: no other item, no
/// attribute but doc comments, no visibility). `false` only means "run the
/// full checks", which then say what is wrong, if anything.
pub(crate) fn matches_exactly(item: &ItemImpl, form: Form, args: &Args, keys: &[String]) -> bool {
    if form != Form::TraitImpl {
        return false;
    }
    let mut header_errors = Vec::new();
    // the type's name only goes into messages, and any message means `false`
    check_impl_header(item, form, args, "", &mut header_errors);
    if !header_errors.is_empty() {
        return false;
    }
    let mut matched = vec![false; keys.len()];
    for impl_item in &item.items {
        let ImplItem::Fn(function) = impl_item else {
            return false;
        };
        if function.attrs.iter().any(|a| !a.path().is_ident("doc"))
            || !matches!(function.vis, syn::Visibility::Inherited)
            || function.modifiers.defaultness.is_some()
        {
            return false;
        }
        let Some(key) = signature_key(&function.sig) else {
            return false;
        };
        match keys.iter().position(|k| *k == key) {
            Some(index) if !matched[index] => matched[index] = true,
            _ => return false,
        }
    }
    matched.iter().all(|m| *m)
}

fn check_impl_header(
    item: &ItemImpl,
    form: Form,
    args: &Args,
    self_ty: &str,
    errors: &mut Vec<syn::Error>,
) {
    if let Some(unsafety) = item.unsafety {
        errors.push(syn::Error::new(
            unsafety.span(),
            "a manager impl must not be `unsafe`: `WebSocketManager` is a safe trait",
        ));
    }
    if let Some(defaultness) = item.modifiers.defaultness {
        errors.push(syn::Error::new(
            defaultness.span(),
            "`default impl` cannot be checked against the contract; write a plain impl",
        ));
    }
    if form == Form::TraitImpl
        && let Some((path, _)) = &item.trait_
        && let Some(last) = path.segments.last()
        && !last.arguments.is_empty()
    {
        errors.push(syn::Error::new_spanned(
            &last.arguments,
            "`WebSocketManager` takes no generic arguments",
        ));
    }
    let mut type_params = Vec::new();
    for param in &item.generics.params {
        match param {
            GenericParam::Lifetime(lifetime) => errors.push(syn::Error::new(
                lifetime.span(),
                format!(
                    "a manager must be `'static` (it is shared between tasks, as `DynManager` or in an `Arc`), so `{self_ty}` cannot borrow with lifetime `{}`; own the data or hold it in an `Arc`",
                    lifetime.lifetime
                ),
            )),
            GenericParam::Type(_) | GenericParam::Const(_) => type_params.push(param),
        }
    }
    match (&args.register, type_params.is_empty()) {
        (None, false) => errors.push(syn::Error::new_spanned(
            &item.generics,
            format!(
                "`{self_ty}` is generic, and the registry can only hold a concrete type; name the instantiation to register: `#[websocket_manager(register = {})]`",
                example_instantiation(item)
            ),
        )),
        (Some((_, span)), true) => errors.push(syn::Error::new(
            *span,
            format!("`register` is only for generic impls; `{self_ty}` is registered as it is, so remove `register`"),
        )),
        _ => {}
    }
    for attr in &item.attrs {
        if is_async_trait(attr) {
            errors.push(syn::Error::new_spanned(
                attr,
                "remove `#[async_trait]`: the contract's async methods are plain `async fn`, which `#[websocket_manager]` takes as written",
            ));
        }
    }
}

/// `#[async_trait]`, by any path.
pub(crate) fn is_async_trait(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "async_trait")
}

/// `M<S>` becomes `M<YourType>` for the `register` hint.
fn example_instantiation(item: &ItemImpl) -> String {
    let ty = render_type(&item.self_ty);
    match ty.find('<') {
        Some(index) => format!("{}<ConcreteType>", &ty[..index]),
        None => ty,
    }
}

/// `#[async_trait]` above `#[websocket_manager]` has already rewritten every
/// `async fn`; say so instead of reporting 5 confusing mismatches.
fn async_trait_already_applied(item: &ItemImpl) -> Option<syn::Error> {
    item.items.iter().find_map(|impl_item| match impl_item {
        ImplItem::Fn(function)
            if function.sig.generics.lifetimes().any(|l| l.lifetime.ident == "async_trait") =>
        {
            Some(syn::Error::new(
                function.sig.ident.span(),
                "`#[async_trait]` was applied before `#[websocket_manager]` and rewrote this method; remove `#[async_trait]`: the contract's async methods are plain `async fn`, which `#[websocket_manager]` takes as written",
            ))
        }
        _ => None,
    })
}

fn missing_methods(
    item: &ItemImpl,
    self_ty: &str,
    missing: &[&ContractMethod],
    total: usize,
) -> syn::Error {
    let (impl_token, generics, self_type) = (&item.impl_token, &item.generics, &item.self_ty);
    let header = match &item.trait_ {
        Some((path, for_token)) => {
            let bang = &item.modifiers.polarity;
            quote!(#impl_token #generics #bang #path #for_token #self_type)
        }
        None => quote!(#impl_token #generics #self_type),
    };
    let count = missing.len();
    let mut message = format!(
        "`{self_ty}` is missing {count} of the {total} `WebSocketManager` contract methods; add {}:\n",
        if count == 1 { "it" } else { "them" }
    );
    for method in missing {
        message.push_str(&format!("\n    {} {{ todo!() }}", method.signature()));
        if method.critical {
            message.push_str("  // critical");
        }
    }
    let critical: Vec<String> = missing
        .iter()
        .filter(|m| m.critical)
        .map(|m| format!("`{}`", m.name()))
        .collect();
    if !critical.is_empty() {
        message.push_str(&format!(
            "\n\n{} {} critical: a manager without {} crashed agent runs in production",
            critical.join(" and "),
            if critical.len() == 1 { "is" } else { "are" },
            if critical.len() == 1 { "it" } else { "them" },
        ));
    }
    syn::Error::new_spanned(header, message)
}

fn unknown_method(function: &ImplItemFn, contract: &Contract) -> syn::Error {
    let name = function.sig.ident.to_string();
    let hint = match closest(&name, contract.names()) {
        Some(candidate) => format!("; did you mean `{candidate}`?"),
        None => "; helper methods belong in a separate inherent `impl` block".to_owned(),
    };
    syn::Error::new(
        function.sig.ident.span(),
        format!("`{name}` is not a method of the `WebSocketManager` contract{hint}"),
    )
}

fn foreign_item(item: &ImplItem) -> Option<syn::Error> {
    let (what, tokens) = match item {
        ImplItem::Type(t) => (
            format!("associated type `{}`", t.ident),
            t.to_token_stream(),
        ),
        ImplItem::Const(c) => (
            format!("associated constant `{}`", c.ident),
            c.to_token_stream(),
        ),
        ImplItem::Macro(m) => ("a macro invocation".to_owned(), m.to_token_stream()),
        ImplItem::Fn(_) => return None,
        other => ("this item".to_owned(), other.to_token_stream()),
    };
    Some(syn::Error::new_spanned(
        tokens,
        format!(
            "{what} is not part of the `WebSocketManager` contract, which has only its 11 methods; move it to an inherent `impl` block"
        ),
    ))
}

/// A contract method's signature as text, rendered on first use.
pub(crate) struct LazySignature<'a> {
    spec: &'a ContractMethod,
    text: std::cell::OnceCell<String>,
}

impl<'a> LazySignature<'a> {
    pub(crate) fn new(spec: &'a ContractMethod) -> Self {
        LazySignature {
            spec,
            text: std::cell::OnceCell::new(),
        }
    }
}

impl std::fmt::Display for LazySignature<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text.get_or_init(|| self.spec.signature()))
    }
}

/// Every difference between one method and its contract entry.
pub(crate) fn check_method(function: &ImplItemFn, spec: &ContractMethod) -> Vec<syn::Error> {
    let sig = &function.sig;
    let name = spec.name();
    // rendered only when a message quotes it: most methods are correct
    let contract_sig = LazySignature::new(spec);
    let mut errors = Vec::new();
    let mut error = |tokens: &dyn ToTokens, message: String| {
        errors.push(syn::Error::new_spanned(tokens, message));
    };

    if let Some(constness) = &sig.constness {
        error(
            constness,
            format!("`{name}` must not be `const`: the contract declares `{contract_sig}`"),
        );
    }
    if let syn::Safety::Unsafe(unsafety) = &sig.safety {
        error(
            unsafety,
            format!("`{name}` must not be `unsafe`: the contract declares `{contract_sig}`"),
        );
    }
    if let Some(abi) = &sig.abi {
        error(
            abi,
            format!("`{name}` must not declare an ABI: the contract declares `{contract_sig}`"),
        );
    }
    if let Some(variadic) = &sig.variadic {
        error(variadic, format!("`{name}` must not be variadic"));
    }
    match (spec.is_async(), &sig.asyncness) {
        (true, None) => error(
            &sig.fn_token,
            format!("`{name}` must be `async`: the contract declares `{contract_sig}`"),
        ),
        (false, Some(asyncness)) => error(
            asyncness,
            format!(
                "`{name}` must not be `async`: the contract declares `{contract_sig}`, which callers use without `.await`"
            ),
        ),
        _ => {}
    }
    check_generics(sig, &name, &contract_sig, &mut error);
    check_receiver(sig, &name, &mut error);
    check_params(sig, spec, &name, &mut error);
    check_output(sig, spec, &name, &mut error);
    errors
}

type Report<'r> = dyn FnMut(&dyn ToTokens, String) + 'r;

/// Whether the method's own generics declare `lifetime`: such lifetimes are
/// reported once, on the generics, rather than at every use.
fn declared_by(sig: &Signature, lifetime: &syn::Lifetime) -> bool {
    sig.generics.lifetimes().any(|l| l.lifetime == *lifetime)
}

fn check_generics(
    sig: &Signature,
    name: &str,
    contract_sig: &LazySignature<'_>,
    error: &mut Report<'_>,
) {
    let lifetimes: Vec<String> = sig
        .generics
        .lifetimes()
        .map(|l| l.lifetime.to_string())
        .collect();
    let has_type_params =
        sig.generics.type_params().next().is_some() || sig.generics.const_params().next().is_some();
    if has_type_params {
        error(
            &sig.generics,
            format!("`{name}` must not be generic: the contract declares `{contract_sig}`"),
        );
    } else if !lifetimes.is_empty() {
        let list: Vec<String> = lifetimes.iter().map(|l| format!("`{l}`")).collect();
        error(
            &sig.generics,
            format!(
                "`{name}` must not declare {} {}: the contract elides every lifetime; remove `{}` and every use of {} in the signature: `{contract_sig}`",
                if lifetimes.len() == 1 {
                    "lifetime"
                } else {
                    "lifetimes"
                },
                list.join(", "),
                render_tokens(&sig.generics.to_token_stream()),
                if lifetimes.len() == 1 { "it" } else { "them" },
            ),
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        error(
            where_clause,
            format!(
                "`{name}` must not have a `where` clause: the contract declares `{contract_sig}`"
            ),
        );
    }
}

fn check_receiver(sig: &Signature, name: &str, error: &mut Report<'_>) {
    let shared = "managers are shared between tasks (as `DynManager` or in an `Arc`); keep mutable state behind a lock, an atomic or a concurrent map";
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            let found = render_tokens(&receiver.to_token_stream());
            let (by_shared_ref, lifetime) = match &receiver.kind {
                syn::ReceiverKind::Reference(_, lifetime, None) => (true, lifetime.as_ref()),
                syn::ReceiverKind::Typed(_, ty) => (canonical(ty) == "&Self", None),
                _ => (false, None),
            };
            if !by_shared_ref {
                error(
                    receiver,
                    format!("`{name}` must take `&self`, found `{found}`: {shared}"),
                );
                return;
            }
            let lifetime = lifetime.filter(|l| l.ident != "_" && !declared_by(sig, l));
            if let Some(lifetime) = lifetime {
                error(
                    lifetime,
                    format!(
                        "`{name}` must take plain `&self`: remove the lifetime `{lifetime}`, the contract elides it"
                    ),
                );
            }
        }
        Some(first) => error(
            first,
            format!("`{name}` must take `&self` as its first parameter: {shared}"),
        ),
        None => error(
            &sig.ident,
            format!("`{name}` must take `&self` as its first parameter: {shared}"),
        ),
    }
}

fn check_params(sig: &Signature, spec: &ContractMethod, name: &str, error: &mut Report<'_>) {
    let expected = spec.params();
    let found: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(pat),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if expected.len() != found.len() {
        let list: Vec<String> = expected
            .iter()
            .map(|(ident, ty)| format!("{ident}: {}", render_type(ty)))
            .collect();
        let tokens: &dyn ToTokens = if found.is_empty() {
            &sig.ident
        } else {
            &sig.inputs
        };
        error(
            tokens,
            format!(
                "`{name}` takes {} parameter{} after `&self` (`{}`), found {}",
                expected.len(),
                if expected.len() == 1 { "" } else { "s" },
                list.join(", "),
                found.len()
            ),
        );
        return;
    }
    for ((param, expected_ty), found) in expected.iter().zip(found) {
        let lifetimes = named_lifetimes(&found.ty);
        let undeclared: Vec<&syn::Lifetime> =
            lifetimes.iter().filter(|l| !declared_by(sig, l)).collect();
        for lifetime in &undeclared {
            error(
                lifetime,
                format!(
                    "parameter `{param}` of `{name}` must not name lifetime `{lifetime}`: the contract elides it; write `{}`",
                    render_type(expected_ty)
                ),
            );
        }
        if undeclared.is_empty() && canonical(expected_ty) != canonical(&found.ty) {
            error(
                &found.ty,
                with_note(
                    format!(
                        "mismatched type for parameter `{param}` of `{name}`: expected `{}`, found `{}`",
                        render_type(expected_ty),
                        render_type(&found.ty)
                    ),
                    compared_by_name_note(expected_ty, &found.ty),
                ),
            );
        }
    }
}

fn check_output(sig: &Signature, spec: &ContractMethod, name: &str, error: &mut Report<'_>) {
    let Some(expected) = spec.output() else {
        return;
    };
    let expected_text = render_type(expected);
    match &sig.output {
        ReturnType::Default => error(
            &sig.ident,
            format!("`{name}` must return `{expected_text}`; add `-> {expected_text}`"),
        ),
        ReturnType::Type(_, found) => {
            if canonical(expected) != canonical(found) {
                error(
                    found,
                    with_note(
                        format!(
                            "`{name}` must return `{expected_text}`, found `{}`",
                            render_type(found)
                        ),
                        compared_by_name_note(expected, found),
                    ),
                );
            }
        }
    }
}

/// A message, and on its next line the note that explains it, if any.
fn with_note(message: String, note: Option<String>) -> String {
    match note {
        Some(note) => format!("{message}\n{note}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Facts;
    use crate::expand::tests::VALID_IMPL;

    fn exact(source: &str) -> bool {
        let item: ItemImpl = syn::parse_str(source).unwrap();
        let (args, error) = crate::args::parse(proc_macro2::TokenStream::new());
        assert!(error.is_none());
        matches_exactly(&item, Form::TraitImpl, &args, &Facts::get().unwrap().keys)
    }

    #[test]
    fn only_an_impl_of_exactly_the_contract_skips_the_checks() {
        assert!(exact(VALID_IMPL));
        // fully qualified paths are the same types
        assert!(exact(&VALID_IMPL.replace(
            "message: serde_json::Value",
            "message: ::serde_json::Value"
        )));
        let departures = [
            (
                "fn is_connection_active(&self, user_id: &UserId)",
                "fn is_connection_active(&self, user_id: &str)",
            ),
            ("-> bool { false }", "-> u8 { 0 }"),
            ("async fn send_to_user", "fn send_to_user"),
            ("fn get_connection(&self,", "fn get_connection(&mut self,"),
            (
                "fn get_connection(&self,",
                "fn get_connection<'a>(&'a self,",
            ),
            ("fn get_connection(&self,", "pub fn get_connection(&self,"),
            (
                "fn get_connection(&self,",
                "#[cfg(test)] fn get_connection(&self,",
            ),
            (
                "fn get_connection(&self,",
                "unsafe fn get_connection(&self,",
            ),
            (
                "fn is_connection_active(&self, user_id: &UserId) -> bool { false }",
                "",
            ),
            ("{ Ok(()) }", "{ Ok(()) } fn helper(&self) {}"),
            ("{ Ok(()) }", "{ Ok(()) } const X: u8 = 1;"),
            (
                "impl WebSocketManager for Good",
                "impl<'a> WebSocketManager for Good",
            ),
        ];
        for (from, to) in departures {
            assert!(VALID_IMPL.contains(from), "{from}");
            assert!(!exact(&VALID_IMPL.replacen(from, to, 1)), "{to}");
        }
        // the same method twice (in place of another)
        let twice = VALID_IMPL.replace(
            "fn is_connection_active(&self, user_id: &UserId) -> bool { false }",
            "fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool { false }",
        );
        assert!(!exact(&twice));
    }
}
