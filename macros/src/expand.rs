//! `#[websocket_manager]`: parse, check, then generate.
//!
//! On success the impl is emitted as written (the contract's async methods
//! are native `async fn`) and registered. On any error
//! the output is the errors plus a complete impl (the valid methods kept, the
//! others replaced by stubs), so the user sees our messages and not a cascade
//! of rustc's.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Generics, ImplItem, ImplItemFn, Item, ItemImpl, Pat, Path, Type};

use crate::args::{self, Args, Mode};
use crate::contract::{Contract, ContractMethod, Facts};
use crate::hollow::Original;
use crate::types::{Qualify, render_type};
use crate::validate::{self, Form};

const PLACEMENT: &str = "`#[websocket_manager]` goes on an impl block: `impl WebSocketManager for MyManager { ... }` (the contract's 11 methods), or `impl MyManager { ... }` for a type that already has them";

/// The whole attribute, on `proc_macro2` streams. Never panics: every
/// failure becomes `compile_error!` next to the best output possible.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (args, arg_error) = args::parse(attr);
    let mut errors: Vec<syn::Error> = arg_error.into_iter().collect();
    let facts = match Facts::get() {
        Ok(facts) => facts,
        Err(error) => return with_errors(vec![error], item),
    };
    let args_valid = errors.is_empty();
    let (hollowed, original) = crate::hollow::hollow(item);
    let parsed: Item = match syn::parse2(hollowed) {
        Ok(parsed) => parsed,
        Err(error) => {
            errors.push(error);
            return with_errors(errors, original.tokens);
        }
    };
    let (item_impl, form) = match classify(parsed) {
        Ok(found) => found,
        Err(error) => {
            errors.push(error);
            return with_errors(errors, original.tokens);
        }
    };
    if args_valid && validate::matches_exactly(&item_impl, form, &args, &facts.keys) {
        // nothing to report, so no need for the contract's syn form
        // (parsing it would be most of this expansion's time)
        let mut generated = checked_impl(
            &original.tokens,
            &item_impl.generics,
            &item_impl.self_ty,
            &args,
        );
        generated.extend(registration(&item_impl, facts.fingerprint, &args));
        return generated;
    }
    let contract = match Contract::load() {
        Ok(contract) => contract,
        Err(error) => return with_errors(vec![error], original.tokens),
    };
    let checked = validate::check(&item_impl, form, &contract, &args);
    errors.extend(checked.errors);
    let has_errors = !errors.is_empty();
    let mut generated = generate(
        original,
        &item_impl,
        form,
        &contract,
        &checked.valid,
        &args,
        has_errors,
    );
    if args_valid {
        // with unusable arguments we cannot know what to register: only the
        // argument error shows, no guessed registration
        generated.extend(registration(&item_impl, facts.fingerprint, &args));
    }
    let errors = errors.iter().map(syn::Error::to_compile_error);
    quote! {
        #(#errors)*
        #generated
    }
}

fn with_errors(errors: Vec<syn::Error>, item: TokenStream) -> TokenStream {
    let errors = errors.iter().map(syn::Error::to_compile_error);
    quote! {
        #(#errors)*
        #item
    }
}

/// Which form the item is, or the error that says where the attribute goes.
fn classify(item: Item) -> Result<(ItemImpl, Form), syn::Error> {
    let (what, span): (String, Span) = match item {
        Item::Impl(item_impl) => {
            let Some((path, _)) = &item_impl.trait_ else {
                return Ok((item_impl, Form::Inherent));
            };
            let trait_name = path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            if let Some(bang) = &item_impl.modifiers.polarity {
                return Err(syn::Error::new(
                    bang.span(),
                    "a negative impl cannot be a manager; remove `#[websocket_manager]`",
                ));
            }
            if trait_name == "WebSocketManager" {
                return Ok((item_impl, Form::TraitImpl));
            }
            let message = format!("{PLACEMENT}; it cannot go on an impl of `{trait_name}`");
            return Err(syn::Error::new_spanned(path, message));
        }
        Item::Struct(s) => ("a struct".to_owned(), s.ident.span()),
        Item::Enum(e) => ("an enum".to_owned(), e.ident.span()),
        Item::Fn(f) => ("a function".to_owned(), f.sig.ident.span()),
        Item::Trait(t) => ("a trait".to_owned(), t.ident.span()),
        Item::Mod(m) => ("a module".to_owned(), m.ident.span()),
        other => ("this item".to_owned(), other.span()),
    };
    Err(syn::Error::new(
        span,
        format!("{PLACEMENT}; it cannot go on {what}"),
    ))
}

/// `original` is the impl as the user wrote it, `item` its parse without
/// method bodies.
fn generate(
    original: Original,
    item: &ItemImpl,
    form: Form,
    contract: &Contract,
    valid: &[Option<&ImplItemFn>],
    args: &Args,
    has_errors: bool,
) -> TokenStream {
    let krate = &args.krate;
    if item.generics.lifetimes().next().is_some() {
        // a borrowing manager cannot be `'static`: emit no trait impl, so
        // only our error shows and not rustc's lifetime cascade
        return match form {
            Form::TraitImpl => TokenStream::new(),
            Form::Inherent => original.tokens,
        };
    }
    match form {
        Form::TraitImpl if !has_errors => {
            checked_impl(&original.tokens, &item.generics, &item.self_ty, args)
        }
        Form::TraitImpl => {
            // keep what is valid, stub the rest: a complete impl, no cascade
            let mut fallback = item.clone();
            // reported by validate; left in, it would rewrite the methods
            // into a shape the trait does not have
            fallback
                .attrs
                .retain(|attr| !validate::is_async_trait(attr));
            fallback.items = contract
                .methods
                .iter()
                .zip(valid)
                .map(|(method, found)| match found {
                    Some(function) => ImplItem::Fn((*function).clone()),
                    None => ImplItem::Verbatim(stub(method, krate)),
                })
                .collect();
            // the kept methods were parsed without their bodies
            original.restore(&mut fallback);
            let annotated = annotated(&item.generics, &item.self_ty, args);
            quote! {
                // keeps "the following other types implement" lists of
                // unrelated managers out of users' trait errors
                #[diagnostic::do_not_recommend]
                #fallback
                #annotated
            }
        }
        Form::Inherent => {
            let self_ty = &item.self_ty;
            let (impl_generics, _, where_clause) = item.generics.split_for_impl();
            let methods = contract
                .methods
                .iter()
                .zip(valid)
                .map(|(method, found)| match found {
                    Some(_) => delegation(method, self_ty, krate),
                    None => stub(method, krate),
                });
            let annotated = annotated(&item.generics, self_ty, args);
            let original_tokens = &original.tokens;
            quote! {
                #original_tokens
                // keeps "the following other types implement" lists of
                // unrelated managers out of users' trait errors
                #[diagnostic::do_not_recommend]
                impl #impl_generics #krate::WebSocketManager for #self_ty #where_clause {
                    #(#methods)*
                }
                #annotated
            }
        }
    }
}

/// A trait impl that passed the checks: the user's own tokens (not `item`
/// printed back: printing a parsed impl costs as much as parsing it), and
/// the marker.
fn checked_impl(
    original: &TokenStream,
    generics: &Generics,
    self_ty: &Type,
    args: &Args,
) -> TokenStream {
    let annotated = annotated(generics, self_ty, args);
    quote! {
        // keeps "the following other types implement" lists of
        // unrelated managers out of users' trait errors
        #[diagnostic::do_not_recommend]
        #original
        #annotated
    }
}

/// The marker only this attribute implements: an impl of the trait without
/// the attribute lacks it, and rustc says to add the attribute. With
/// `readiness = path`, it also reports the manager's readiness through
/// `path`.
fn annotated(generics: &Generics, self_ty: &Type, args: &Args) -> TokenStream {
    let krate = &args.krate;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let readiness = args.readiness.as_ref().map(|path| {
        quote! {
            #[inline]
            fn reported_readiness(&self) -> #krate::Readiness {
                #path(self)
            }
        }
    });
    quote! {
        #[diagnostic::do_not_recommend]
        impl #impl_generics #krate::__private::Annotated for #self_ty #where_clause {
            #readiness
        }
    }
}

/// The contract's signature with types qualified for any crate, and
/// parameter names from the contract (prefixed `_` for stubs).
fn qualified_signature(method: &ContractMethod, krate: &Path, unused: bool) -> syn::Signature {
    let mut sig = method.item.sig.clone();
    let mut qualify = Qualify { krate };
    for input in &mut sig.inputs {
        if let FnArg::Typed(pat) = input {
            qualify.visit_type_mut(&mut pat.ty);
            if unused && let Pat::Ident(ident) = &mut *pat.pat {
                ident.ident = format_ident!("_{}", ident.ident);
            }
        }
    }
    if let syn::ReturnType::Type(_, ty) = &mut sig.output {
        qualify.visit_type_mut(ty);
    }
    sig
}

fn stub(method: &ContractMethod, krate: &Path) -> TokenStream {
    let sig = qualified_signature(method, krate, true);
    quote! {
        #sig {
            ::core::unreachable!("`#[websocket_manager]` reported a compile error for this method")
        }
    }
}

fn delegation(method: &ContractMethod, self_ty: &Type, krate: &Path) -> TokenStream {
    let sig = qualified_signature(method, krate, false);
    let name = method.ident();
    let params = method.params().into_iter().map(|(ident, _)| ident);
    let call = quote!(<#self_ty>::#name(self, #(#params),*));
    let body = if method.is_async() {
        quote!(#call.await)
    } else {
        call
    };
    quote! {
        #[inline]
        #sig { #body }
    }
}

fn registration(item: &ItemImpl, fingerprint: u64, args: &Args) -> TokenStream {
    let is_generic = item
        .generics
        .params
        .iter()
        .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)));
    let has_lifetimes = item.generics.lifetimes().next().is_some();
    let registered: &Type = match (&args.register, is_generic) {
        (Some((ty, _)), true) => ty,
        (None, false) if !has_lifetimes => &item.self_ty,
        // reported by validate: a generic impl without `register`, or
        // `register` on a concrete impl, or a borrowed manager
        _ => return TokenStream::new(),
    };
    // spanned on the impl, so the registry points at `impl`, not the attribute
    registration_of(registered, item.impl_token.span, fingerprint, args)
}

/// The registration of `registered`, located at `impl_span`.
fn registration_of(
    registered: &Type,
    impl_span: Span,
    fingerprint: u64,
    args: &Args,
) -> TokenStream {
    let krate = &args.krate;
    let type_name = render_type(registered);
    let name = args
        .name
        .as_ref()
        .map(|lit| lit.value())
        .unwrap_or_else(|| type_name.clone());
    let mode = match args.mode {
        Mode::Unified => quote!(#krate::__private::ManagerMode::Unified),
        Mode::Isolated => quote!(#krate::__private::ManagerMode::Isolated),
    };
    let fingerprint = Literal::u64_suffixed(fingerprint);
    let span = registered.span();
    let constructor = if args.factory {
        quote_spanned!(span=> ::core::option::Option::Some(#krate::__private::construct::<#registered>))
    } else {
        quote!(::core::option::Option::None)
    };
    let registered_tokens = registered.to_token_stream();
    let line = quote_spanned!(impl_span=> ::core::line!());
    let file = quote_spanned!(impl_span=> ::core::file!());
    quote! {
        const _: () = {
            // the macro and the runtime must describe the same contract
            ::core::assert!(
                #fingerprint == #krate::__private::PROTOCOL_FINGERPRINT,
                "websocket-manager-macros and websocket-manager disagree on the contract: use the same version of both"
            );
            // the registered type must be a manager (checked here, once)
            fn __assert_manager<T: #krate::WebSocketManager>() {}
            let _ = __assert_manager::<#registered_tokens>;
            #krate::__private::inventory::submit! {
                #krate::__private::Registration::new(#name, #type_name, #mode, #constructor)
                    .at(::core::module_path!(), #file, #line)
                    .with_fingerprint(#fingerprint)
            }
        };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> String {
        let attr: TokenStream = attr.parse().unwrap();
        let item: TokenStream = item.parse().unwrap();
        expand(attr, item).to_string()
    }

    pub(crate) const VALID_IMPL: &str = r#"
        impl WebSocketManager for Good {
            async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
            async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
            fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
            fn get_user_connections(&self, user_id: &UserId) -> std::collections::HashSet<ConnectionId> { Default::default() }
            fn is_connection_active(&self, user_id: &UserId) -> bool { false }
            fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
            fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool { false }
            async fn send_to_user(&self, user_id: &UserId, message: serde_json::Value) -> Result<Delivery, ManagerError> { todo!() }
            async fn emit_critical_event(&self, user_id: &UserId, event_type: &str, data: serde_json::Value) -> Result<Delivery, ManagerError> { todo!() }
            fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { todo!() }
            async fn send_to_thread(&self, thread_id: &ThreadId, message: serde_json::Value) -> Result<Delivery, ManagerError> { todo!() }
        }
    "#;

    #[test]
    fn readiness_is_forwarded_through_the_marker_only_when_asked() {
        let plain = expand_str("name = \"good\"", VALID_IMPL);
        assert!(!plain.contains("reported_readiness"), "{plain}");
        let out = expand_str("name = \"good\", readiness = Self::admits", VALID_IMPL);
        assert!(!out.contains("compile_error"), "{out}");
        assert!(
            out.contains("fn reported_readiness (& self) -> :: websocket_manager :: Readiness { Self :: admits (self) }"),
            "{out}"
        );
        let wrong = expand_str("readiness = \"admits\"", VALID_IMPL);
        assert!(
            wrong.contains("`readiness` takes the path of a method"),
            "{wrong}"
        );
    }

    #[test]
    fn valid_trait_impl_is_kept_as_written_plus_marker_and_registration() {
        let out = expand_str("name = \"good\", mode = \"isolated\"", VALID_IMPL);
        assert!(!out.contains("compile_error"), "{out}");
        assert!(!out.contains("async_trait"), "{out}");
        assert!(out.contains("async fn send_to_user (& self , user_id : & UserId , message : serde_json :: Value)"), "{out}");
        assert!(
            out.contains(":: websocket_manager :: __private :: Annotated for Good"),
            "{out}"
        );
        assert!(out.contains("inventory :: submit"));
        assert!(out.contains("\"good\""));
        assert!(out.contains("ManagerMode :: Isolated"));
        assert!(out.contains("construct :: < Good >"));
    }

    #[test]
    fn renamed_crate_is_used_everywhere() {
        let out = expand_str("crate = wsm", VALID_IMPL);
        assert!(!out.contains("compile_error"), "{out}");
        assert!(!out.contains(":: websocket_manager"), "{out}");
        assert!(out.contains("wsm :: __private :: inventory"));
    }

    #[test]
    fn missing_method_is_reported_once_with_its_signature() {
        let item = VALID_IMPL.replace(
            "fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> { None }",
            "",
        );
        let out = expand_str("", &item);
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("missing 1 of the 11"), "{out}");
        assert!(out.contains("fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> { todo!() }  // critical"));
        // the fallback still defines the method so rustc adds nothing
        assert!(out.contains("unreachable"));
    }

    #[test]
    fn every_problem_is_reported_in_one_expansion() {
        let item = VALID_IMPL
            .replace("async fn send_to_user", "fn send_to_user")
            .replace(
                "fn is_connection_active(&self, user_id: &UserId)",
                "fn is_connection_active(&self, user_id: &str)",
            )
            .replace("fn get_connection(&self,", "fn get_connection(&mut self,");
        let out = expand_str("mode = \"shared\"", &item);
        assert_eq!(out.matches("compile_error").count(), 4, "{out}");
        assert!(out.contains("unknown mode `shared`"));
        assert!(out.contains("`send_to_user` must be `async`"));
        assert!(out.contains("expected `&UserId`, found `&str`"));
        assert!(out.contains("must take `&self`, found `&mut self`"));
    }

    #[test]
    fn inherent_form_generates_delegating_trait_impl() {
        let item = VALID_IMPL
            .replace("impl WebSocketManager for Good", "impl Good")
            .replace("{ Ok(()) }", "{ Ok(()) } fn helper(&self) {}");
        let out = expand_str("", &item);
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("impl :: websocket_manager :: WebSocketManager for Good"));
        assert!(out.contains("< Good > :: send_to_user (self , user_id , message) . await"));
    }

    #[test]
    fn wrong_placement_keeps_the_item() {
        let out = expand_str("", "struct NotAnImpl;");
        assert!(out.contains("goes on an impl block"));
        assert!(out.contains("struct NotAnImpl"));
    }

    #[test]
    fn factory_false_registers_without_constructor() {
        let out = expand_str("factory = false", VALID_IMPL);
        assert!(out.contains("Registration :: new ("), "{out}");
        assert!(
            out.contains(", :: core :: option :: Option :: None)"),
            "{out}"
        );
    }
}
