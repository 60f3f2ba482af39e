//! Types as text: rendering for messages, the fair comparison the checks use,
//! and qualification of the contract's types for generated code.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use syn::visit_mut::VisitMut;
use syn::{GenericArgument, Path, PathArguments, Type};

/// Renders tokens as a person writes them: `Result<(), ManagerError>`,
/// `&mut self`, `fn name(a: &A) -> B`.
pub(crate) fn render_tokens(tokens: &TokenStream) -> String {
    let mut atoms = Vec::new();
    flatten(tokens.clone(), &mut atoms);
    let mut out = String::new();
    let mut prev: Option<&str> = None;
    for atom in &atoms {
        if let Some(prev) = prev
            && needs_space(prev, atom)
        {
            out.push(' ');
        }
        out.push_str(atom);
        prev = Some(atom);
    }
    out
}

/// Splits tokens into atoms, joining multi-character punctuation (`->`, `::`)
/// and lifetimes (`'a`) into one atom each.
fn flatten(tokens: TokenStream, atoms: &mut Vec<String>) {
    let mut pending_punct = String::new();
    for tree in tokens {
        match tree {
            TokenTree::Punct(p) => {
                pending_punct.push(p.as_char());
                if p.spacing() == Spacing::Alone {
                    atoms.push(std::mem::take(&mut pending_punct));
                } else if p.as_char() == '\'' {
                    // a lifetime: the quote is joined to the ident that follows
                }
            }
            TokenTree::Ident(ident) => {
                let text = ident.to_string();
                if pending_punct.ends_with('\'') {
                    let mut joined = std::mem::take(&mut pending_punct);
                    joined.push_str(&text);
                    atoms.push(joined);
                } else {
                    flush(&mut pending_punct, atoms);
                    atoms.push(text);
                }
            }
            TokenTree::Literal(lit) => {
                flush(&mut pending_punct, atoms);
                atoms.push(lit.to_string());
            }
            TokenTree::Group(group) => {
                flush(&mut pending_punct, atoms);
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                if !open.is_empty() {
                    atoms.push(open.to_owned());
                }
                flatten(group.stream(), atoms);
                if !close.is_empty() {
                    atoms.push(close.to_owned());
                }
            }
        }
    }
    flush(&mut pending_punct, atoms);
}

fn flush(pending: &mut String, atoms: &mut Vec<String>) {
    if !pending.is_empty() {
        atoms.push(std::mem::take(pending));
    }
}

fn is_word(atom: &str) -> bool {
    atom.chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '\'')
}

fn needs_space(prev: &str, next: &str) -> bool {
    if matches!(prev, "&" | "(" | "[" | "<" | "::" | "#" | "!" | "&&") {
        return false;
    }
    if next == "::" {
        return !(is_word(prev) || prev == ">");
    }
    if matches!(next, "," | ")" | "]" | ">" | ";" | ":" | "?" | ".") {
        return false;
    }
    if matches!(next, "(" | "<" | "!") && is_word(prev) {
        return false;
    }
    if next == "(" && prev == ">" {
        return false;
    }
    true
}

/// Renders a type for a message.
pub(crate) fn render_type(ty: &Type) -> String {
    render_tokens(&quote::quote!(#ty))
}

/// The form two types are compared in: every path reduced to its last
/// segment (so `std::collections::HashSet<websocket_manager::ConnectionId>`
/// equals `HashSet<ConnectionId>`), lifetimes and grouping dropped.
pub(crate) fn canonical(ty: &Type) -> String {
    match ty {
        Type::Path(path) if path.qself.is_none() => canonical_path(&path.path),
        Type::Reference(reference) => {
            let mutability = if reference.mutability.is_some() {
                "mut "
            } else {
                ""
            };
            format!("&{mutability}{}", canonical(&reference.elem))
        }
        Type::Paren(paren) => canonical(&paren.elem),
        Type::Group(group) => canonical(&group.elem),
        Type::Tuple(tuple) => {
            let elems: Vec<String> = tuple.elems.iter().map(canonical).collect();
            format!("({})", elems.join(","))
        }
        other => render_type(other),
    }
}

fn canonical_path(path: &Path) -> String {
    let Some(last) = path.segments.last() else {
        return String::new();
    };
    let mut out = last.ident.to_string();
    match &last.arguments {
        PathArguments::None => {}
        PathArguments::AngleBracketed(args) => {
            let args: Vec<String> = args
                .args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Lifetime(_) => None,
                    GenericArgument::Type(ty) => Some(canonical(ty)),
                    other => Some(render_tokens(&quote::quote!(#other))),
                })
                .collect();
            if !args.is_empty() {
                out.push('<');
                out.push_str(&args.join(","));
                out.push('>');
            }
        }
        PathArguments::Parenthesized(args) => {
            out.push_str(&render_tokens(&quote::quote!(#args)));
        }
    }
    out
}

/// Type names the checks know are not aliases: every name the contract uses
/// (a test keeps the list in step) and standard types a user may write.
const KNOWN_NAMES: &[&str] = &[
    // the contract's
    "ConnectionHealth",
    "ConnectionId",
    "Delivery",
    "HashSet",
    "ManagerError",
    "Option",
    "Result",
    "ThreadId",
    "UserId",
    "Value",
    "WebSocketConnection",
    "WebSocketHandle",
    "bool",
    "str",
    // the standard library's
    "Arc",
    "BTreeSet",
    "Box",
    "Cow",
    "HashMap",
    "Rc",
    "Self",
    "String",
    "Vec",
    "char",
    "f32",
    "f64",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "isize",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
];

/// When `found` differs from `expected` at a name the checks cannot resolve
/// (a type alias, a renamed import, an associated type), the line that says
/// types are compared by name and what to write instead.
pub(crate) fn compared_by_name_note(expected: &Type, found: &Type) -> Option<String> {
    let (expected, found) = first_difference(expected, found)?;
    let Type::Path(path) = found else {
        return None;
    };
    let name = path.path.segments.last()?.ident.to_string();
    if path.qself.is_none() && KNOWN_NAMES.contains(&name.as_str()) {
        return None;
    }
    Some(format!(
        "`{}` is compared by name (a macro cannot see what a type alias or a renamed import stands for): write `{}` instead",
        render_type(found),
        render_type(expected)
    ))
}

/// The outermost pair of sub-types where `found` departs from `expected`.
fn first_difference<'t>(expected: &'t Type, found: &'t Type) -> Option<(&'t Type, &'t Type)> {
    if canonical(expected) == canonical(found) {
        return None;
    }
    let here = Some((expected, found));
    match (ungroup(expected), ungroup(found)) {
        (Type::Reference(e), Type::Reference(f))
            if e.mutability.is_some() == f.mutability.is_some() =>
        {
            first_difference(&e.elem, &f.elem)
        }
        (Type::Tuple(e), Type::Tuple(f)) if e.elems.len() == f.elems.len() => e
            .elems
            .iter()
            .zip(&f.elems)
            .find_map(|(e, f)| first_difference(e, f)),
        (Type::Path(e), Type::Path(f)) if e.qself.is_none() && f.qself.is_none() => {
            let (Some(e_last), Some(f_last)) = (e.path.segments.last(), f.path.segments.last())
            else {
                return here;
            };
            if e_last.ident != f_last.ident {
                return here;
            }
            let (e_args, f_args) = (type_args(&e_last.arguments), type_args(&f_last.arguments));
            if e_args.len() != f_args.len() {
                return here;
            }
            e_args
                .into_iter()
                .zip(f_args)
                .find_map(|(e, f)| first_difference(e, f))
                .or(here)
        }
        _ => here,
    }
}

fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Paren(paren) => ungroup(&paren.elem),
        Type::Group(group) => ungroup(&group.elem),
        other => other,
    }
}

fn type_args(arguments: &PathArguments) -> Vec<&Type> {
    match arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The named lifetimes written inside a type (`'_` is allowed: it is the
/// elided lifetime spelled out).
pub(crate) fn named_lifetimes(ty: &Type) -> Vec<syn::Lifetime> {
    struct Collect(Vec<syn::Lifetime>);
    impl syn::visit_mut::VisitMut for Collect {
        fn visit_lifetime_mut(&mut self, lifetime: &mut syn::Lifetime) {
            if lifetime.ident != "_" {
                self.0.push(lifetime.clone());
            }
        }
    }
    let mut collect = Collect(Vec::new());
    collect.visit_type_mut(&mut ty.clone());
    collect.0
}

/// Rewrites the contract's bare type names into paths that resolve from any
/// crate: `UserId` becomes `::websocket_manager::UserId`, `Option` becomes
/// `::core::option::Option`, and so on.
pub(crate) struct Qualify<'a> {
    pub krate: &'a Path,
}

impl VisitMut for Qualify<'_> {
    fn visit_type_path_mut(&mut self, node: &mut syn::TypePath) {
        // qualify the generic arguments first
        syn::visit_mut::visit_type_path_mut(self, node);
        if node.qself.is_some() || node.path.leading_colon.is_some() {
            return;
        }
        let Some(first) = node.path.segments.first() else {
            return;
        };
        let first = first.ident.to_string();
        let krate = self.krate;
        let prefix: Option<Path> = match first.as_str() {
            "bool" | "str" | "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" | "String" => {
                None
            }
            "Option" => Some(syn::parse_quote!(::core::option)),
            "Result" => Some(syn::parse_quote!(::core::result)),
            "HashSet" => Some(syn::parse_quote!(::std::collections)),
            "serde_json" => Some(syn::parse_quote!(#krate::__private)),
            _ => Some(krate.clone()),
        };
        if let Some(mut prefix) = prefix {
            prefix.segments.extend(node.path.segments.iter().cloned());
            node.path = prefix;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(src: &str) -> Type {
        syn::parse_str(src).unwrap()
    }

    #[test]
    fn renders_like_source() {
        assert_eq!(
            render_type(&ty("Result<(), ManagerError>")),
            "Result<(), ManagerError>"
        );
        assert_eq!(
            render_type(&ty("& 'a mut std :: string :: String")),
            "&'a mut std::string::String"
        );
        assert_eq!(render_type(&ty("Option<Vec<u8>>")), "Option<Vec<u8>>");
        assert_eq!(render_type(&ty("(u8, u16)")), "(u8, u16)");
    }

    #[test]
    fn compares_paths_fairly() {
        assert_eq!(
            canonical(&ty(
                "std::collections::HashSet<websocket_manager::ConnectionId>"
            )),
            canonical(&ty("HashSet<ConnectionId>"))
        );
        assert_eq!(canonical(&ty("&'_ UserId")), canonical(&ty("&UserId")));
        assert_eq!(canonical(&ty("serde_json::Value")), canonical(&ty("Value")));
        assert_ne!(canonical(&ty("&UserId")), canonical(&ty("&str")));
        assert_ne!(canonical(&ty("&UserId")), canonical(&ty("&mut UserId")));
        assert_ne!(canonical(&ty("&UserId")), canonical(&ty("UserId")));
        assert_ne!(
            canonical(&ty("Option<ConnectionId>")),
            canonical(&ty("Option<String>"))
        );
    }

    #[test]
    fn explains_names_it_cannot_resolve() {
        let note = |e: &str, f: &str| compared_by_name_note(&ty(e), &ty(f));
        assert_eq!(
            note("HashSet<ConnectionId>", "Conns").unwrap(),
            "`Conns` is compared by name (a macro cannot see what a type alias or a renamed import stands for): write `HashSet<ConnectionId>` instead"
        );
        assert!(
            note("Option<ConnectionId>", "Option<Cid>")
                .unwrap()
                .contains("`Cid` is compared by name")
        );
        assert!(
            note("&UserId", "&Uid")
                .unwrap()
                .contains("write `UserId` instead")
        );
        assert!(
            note(
                "Result<Delivery, ManagerError>",
                "Result<Delivery, <Self as Api>::Error>"
            )
            .is_some()
        );
        // real mismatches between known types get no note
        assert_eq!(note("Option<ConnectionId>", "Option<String>"), None);
        assert_eq!(note("&UserId", "&str"), None);
        assert_eq!(note("bool", "u8"), None);
        assert_eq!(note("&UserId", "&UserId"), None);
    }

    #[test]
    fn every_contract_type_name_is_known() {
        struct Names(Vec<String>);
        impl VisitMut for Names {
            fn visit_path_segment_mut(&mut self, segment: &mut syn::PathSegment) {
                self.0.push(segment.ident.to_string());
                syn::visit_mut::visit_path_segment_mut(self, segment);
            }
        }
        let contract = crate::contract::Contract::load().unwrap();
        let mut names = Names(Vec::new());
        for method in &contract.methods {
            for (_, param) in method.params() {
                names.visit_type_mut(&mut param.clone());
            }
            if let Some(output) = method.output() {
                names.visit_type_mut(&mut output.clone());
            }
        }
        // `serde_json` is a module, not a type
        for name in names.0.iter().filter(|n| *n != "serde_json") {
            assert!(
                KNOWN_NAMES.contains(&name.as_str()),
                "add `{name}` to KNOWN_NAMES"
            );
        }
    }

    #[test]
    fn finds_named_lifetimes_but_not_the_anonymous_one() {
        assert_eq!(named_lifetimes(&ty("&'_ UserId")).len(), 0);
        assert_eq!(named_lifetimes(&ty("&'a UserId"))[0].ident, "a");
    }

    #[test]
    fn qualifies_contract_types() {
        let krate: Path = syn::parse_quote!(::websocket_manager);
        let mut t = ty("Result<HashSet<ConnectionId>, serde_json::Value>");
        Qualify { krate: &krate }.visit_type_mut(&mut t);
        assert_eq!(
            render_type(&t),
            "::core::result::Result<::std::collections::HashSet<::websocket_manager::ConnectionId>, ::websocket_manager::__private::serde_json::Value>"
        );
        let mut r = ty("&str");
        Qualify { krate: &krate }.visit_type_mut(&mut r);
        assert_eq!(render_type(&r), "&str");
    }
}
