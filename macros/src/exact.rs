//! The common case, recognised on tokens alone: `impl WebSocketManager for
//! Name { .. }` whose methods are exactly the contract's, each once.
//!
//! Most impls are written from the contract's own signatures, and for them
//! the attribute has nothing to report. Recognising them without syn (no
//! parse of the impl, no token buffer) is most of what the attribute costs
//! a build in a debug proc-macro. Anything this scanner does not understand
//! is not an error: it answers `None` and the full checks run, so it can
//! only be too strict, never too lenient. The keys it builds are the same
//! strings [`signature_key`](crate::contract::signature_key) builds from
//! syn's parse, and a unit test holds the two together.

use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};

/// What the expansion needs of an impl that matched.
pub(crate) struct ExactImpl {
    /// The implementing type: a single name, no generics.
    pub self_ty: Ident,
    /// The `impl` keyword, where the registration points.
    pub impl_span: Span,
}

/// `Some` when `item` is `impl [path::]WebSocketManager for Name { .. }`
/// with no attribute, generics or modifier, and its items are exactly one
/// method per key of `keys` (doc comments allowed), each with the key's
/// signature.
pub(crate) fn exact_impl(item: &TokenStream, keys: &[String]) -> Option<ExactImpl> {
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let (impl_span, rest) = match tokens.split_first()? {
        (TokenTree::Ident(ident), rest) if ident == "impl" => (ident.span(), rest),
        _ => return None,
    };
    // `[::] a :: b :: WebSocketManager for Name { .. }`
    let for_at = rest
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i == "for"))?;
    let trait_path = path_idents(&rest[..for_at])?;
    if trait_path.last()? != "WebSocketManager" {
        return None;
    }
    let [TokenTree::Ident(self_ty), TokenTree::Group(body)] = &rest[for_at + 1..] else {
        return None;
    };
    if body.delimiter() != Delimiter::Brace {
        return None;
    }
    let mut matched = vec![false; keys.len()];
    let items: Vec<TokenTree> = body.stream().into_iter().collect();
    let mut at = 0;
    while at < items.len() {
        let (key, next) = method_key(&items, at)?;
        let index = keys.iter().position(|k| *k == key)?;
        if std::mem::replace(&mut matched[index], true) {
            return None;
        }
        at = next;
    }
    matched.iter().all(|m| *m).then(|| ExactImpl {
        self_ty: self_ty.clone(),
        impl_span,
    })
}

/// The key of the method starting at `items[at]`, and where the next item
/// starts.
fn method_key(items: &[TokenTree], mut at: usize) -> Option<(String, usize)> {
    // doc comments only
    while let Some(TokenTree::Punct(hash)) = items.get(at) {
        if hash.as_char() != '#' {
            return None;
        }
        let TokenTree::Group(attr) = items.get(at + 1)? else {
            return None;
        };
        let is_doc = attr.delimiter() == Delimiter::Bracket
            && matches!(attr.stream().into_iter().next(), Some(TokenTree::Ident(i)) if i == "doc");
        if !is_doc {
            return None;
        }
        at += 2;
    }
    let mut key = String::new();
    if matches!(items.get(at), Some(TokenTree::Ident(i)) if i == "async") {
        key.push_str("async ");
        at += 1;
    }
    match items.get(at) {
        Some(TokenTree::Ident(i)) if i == "fn" => {}
        _ => return None,
    }
    let TokenTree::Ident(name) = items.get(at + 1)? else {
        return None;
    };
    key.push_str(&name.to_string());
    let TokenTree::Group(params) = items.get(at + 2)? else {
        return None;
    };
    if params.delimiter() != Delimiter::Parenthesis {
        return None;
    }
    key.push('(');
    let params: Vec<TokenTree> = params.stream().into_iter().collect();
    let mut params = split_top_level(&params).into_iter();
    match params.next()? {
        [TokenTree::Punct(amp), TokenTree::Ident(receiver)]
            if amp.as_char() == '&' && receiver == "self" =>
        {
            key.push_str("&self");
        }
        _ => return None,
    }
    for param in params {
        // `name: Type`, the name a plain identifier
        let [TokenTree::Ident(_), TokenTree::Punct(colon), ty @ ..] = param else {
            return None;
        };
        // (`name: ::path::Type` arrives as `:` `:` `:`; the first is ours)
        if colon.as_char() != ':' {
            return None;
        }
        key.push_str(", ");
        key.push_str(&canonical(ty)?);
    }
    key.push(')');
    // `-> Type` up to the body
    let mut next = at + 3;
    let body_at = next
        + items[next..]
            .iter()
            .position(|t| matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace))?;
    if body_at > next {
        let [TokenTree::Punct(dash), TokenTree::Punct(gt), output @ ..] = &items[next..body_at]
        else {
            return None;
        };
        if dash.as_char() != '-' || gt.as_char() != '>' {
            return None;
        }
        key.push_str(" -> ");
        key.push_str(&canonical(output)?);
    }
    next = body_at + 1;
    Some((key, next))
}

/// [`canonical`](crate::types::canonical) for the types this scanner
/// understands: references, tuples and paths with type arguments on their
/// last segment. `None` for anything else (lifetimes included).
fn canonical(ty: &[TokenTree]) -> Option<String> {
    match ty {
        [TokenTree::Punct(amp), rest @ ..] if amp.as_char() == '&' => match rest {
            [TokenTree::Ident(m), rest @ ..] if m == "mut" => {
                Some(format!("&mut {}", canonical(rest)?))
            }
            _ => Some(format!("&{}", canonical(rest)?)),
        },
        [TokenTree::Group(group)] if group.delimiter() == Delimiter::Parenthesis => {
            let inner: Vec<TokenTree> = group.stream().into_iter().collect();
            let elems = split_top_level(&inner);
            let trailing_comma =
                matches!(inner.last(), Some(TokenTree::Punct(p)) if p.as_char() == ',');
            if elems.len() == 1 && !trailing_comma {
                return None; // `(T)`: a parenthesized type, left to syn
            }
            let elems: Vec<String> = elems.into_iter().map(canonical).collect::<Option<_>>()?;
            Some(format!("({})", elems.join(",")))
        }
        _ => canonical_path(ty),
    }
}

/// `[::] a :: b :: Name [< T, U >]` as `Name<T,U>`.
fn canonical_path(ty: &[TokenTree]) -> Option<String> {
    let open = ty
        .iter()
        .position(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == '<'));
    let (path, args) = match open {
        Some(open) => {
            let [args @ .., TokenTree::Punct(close)] = &ty[open + 1..] else {
                return None;
            };
            if close.as_char() != '>' {
                return None;
            }
            (&ty[..open], Some(args))
        }
        None => (ty, None),
    };
    let mut out = path_idents(path)?.pop()?;
    if let Some(args) = args {
        let args: Vec<String> = split_top_level(args)
            .into_iter()
            .map(canonical)
            .collect::<Option<_>>()?;
        if args.is_empty() {
            return None;
        }
        out.push('<');
        out.push_str(&args.join(","));
        out.push('>');
    }
    Some(out)
}

/// The segments of `[::] a :: b :: c`, `None` for anything else (a keyword
/// such as `dyn` or `impl` included).
fn path_idents(tokens: &[TokenTree]) -> Option<Vec<String>> {
    let mut idents = Vec::new();
    let mut at = 0;
    let mut expect_ident = true;
    if is_path_sep(tokens, 0) {
        at = 2;
    }
    while at < tokens.len() {
        if expect_ident {
            let TokenTree::Ident(ident) = &tokens[at] else {
                return None;
            };
            let text = ident.to_string();
            if matches!(
                text.as_str(),
                "dyn" | "impl" | "fn" | "unsafe" | "extern" | "for" | "mut" | "where"
            ) {
                return None;
            }
            idents.push(text);
            at += 1;
        } else {
            if !is_path_sep(tokens, at) {
                return None;
            }
            at += 2;
        }
        expect_ident = !expect_ident;
    }
    // ends on an identifier
    (!idents.is_empty() && !expect_ident).then_some(idents)
}

fn is_path_sep(tokens: &[TokenTree], at: usize) -> bool {
    matches!(
        (tokens.get(at), tokens.get(at + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':'
    )
}

/// `tokens` split at the commas outside `<..>`; a trailing comma makes no
/// empty last piece.
fn split_top_level(tokens: &[TokenTree]) -> Vec<&[TokenTree]> {
    let mut pieces = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, token) in tokens.iter().enumerate() {
        if let TokenTree::Punct(punct) = token {
            match punct.as_char() {
                '<' => depth += 1,
                // a `>` without its `<` (as in `->`) is left unbalanced: the
                // type is then not understood, which only means "use syn"
                '>' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    pieces.push(&tokens[start..index]);
                    start = index + 1;
                }
                _ => {}
            }
        }
    }
    if start < tokens.len() {
        pieces.push(&tokens[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Contract, signature_key};
    use crate::expand::tests::VALID_IMPL;

    fn keys() -> Vec<String> {
        let contract = Contract::load().unwrap();
        contract
            .methods
            .iter()
            .map(|m| signature_key(&m.item.sig).unwrap())
            .collect()
    }

    fn matches(item: &str) -> bool {
        exact_impl(&item.parse().unwrap(), &keys()).is_some()
    }

    #[test]
    fn the_valid_impl_matches_with_its_name_and_span() {
        let found = exact_impl(&VALID_IMPL.parse().unwrap(), &keys()).unwrap();
        assert_eq!(found.self_ty, "Good");
        // a doc comment on the impl is an attribute: left to syn
        assert!(!matches(&VALID_IMPL.replace(
            "impl WebSocketManager",
            "/// docs\nimpl WebSocketManager"
        )));
        assert!(matches(&VALID_IMPL.replace(
            "impl WebSocketManager",
            "impl ::websocket_manager::WebSocketManager"
        )));
        assert!(matches(&VALID_IMPL.replace(
            "fn is_connection_active",
            "/// Is anyone there?\n fn is_connection_active"
        )));
        assert!(matches(&VALID_IMPL.replace(
            "message: serde_json::Value",
            "message: ::serde_json::Value"
        )));
    }

    /// The scanner's keys are the ones syn's parse gives, for every
    /// signature it understands: parameter types from the contract and
    /// their spelled-out forms.
    #[test]
    fn keys_agree_with_the_syn_keys() {
        for signature in [
            "fn f(&self, a: &std::collections::HashSet<ConnectionId>) -> Option<(u8,)>",
            "async fn f(&self, a: ::serde_json::Value, b: &mut Vec<Result<(), (A, B)>>) -> ()",
            "fn f(&self) -> Result<HashMap<UserId, Vec<ThreadId>>, ManagerError>",
        ] {
            let tokens: Vec<TokenTree> = format!("{signature} {{}}")
                .parse::<TokenStream>()
                .unwrap()
                .into_iter()
                .collect();
            let (key, _) = method_key(&tokens, 0).unwrap();
            let sig: syn::Signature = syn::parse_str(signature).unwrap();
            assert_eq!(key, signature_key(&sig).unwrap(), "{signature}");
        }
    }

    /// Every departure goes to the full checks (which accept or report it).
    #[test]
    fn anything_else_is_left_to_the_full_checks() {
        for (from, to) in [
            (
                "impl WebSocketManager for Good",
                "impl<T> WebSocketManager for Good<T>",
            ),
            (
                "impl WebSocketManager for Good",
                "unsafe impl WebSocketManager for Good",
            ),
            (
                "impl WebSocketManager for Good",
                "impl WebSocketManager for crate::Good",
            ),
            ("impl WebSocketManager for Good", "impl Good"),
            ("impl WebSocketManager for Good", "impl OtherTrait for Good"),
            (
                "impl WebSocketManager for Good",
                "#[cfg(test)] impl WebSocketManager for Good",
            ),
            ("async fn send_to_user", "fn send_to_user"),
            ("fn get_connection(&self,", "fn get_connection(&mut self,"),
            ("fn get_connection(&self,", "pub fn get_connection(&self,"),
            (
                "fn get_connection(&self,",
                "#[inline] fn get_connection(&self,",
            ),
            ("user_id: &UserId) -> bool", "user_id: &str) -> bool"),
            (
                "user_id: &UserId) -> bool",
                "user_id: &'static UserId) -> bool",
            ),
            ("user_id: &UserId) -> bool", "(user_id): &UserId) -> bool"),
            ("-> ConnectionHealth", "-> impl Sized"),
            ("-> ConnectionHealth", "-> (ConnectionHealth)"),
            (
                "thread_id: ThreadId) -> bool { false }",
                "thread_id: ThreadId) -> bool where Self: Sized { false }",
            ),
            ("{ Ok(()) }", "{ Ok(()) } const X: u8 = 1;"),
            (
                "{ Ok(()) }",
                "{ Ok(()) } fn is_connection_active(&self, user_id: &UserId) -> bool { false }",
            ),
        ] {
            assert!(VALID_IMPL.contains(from), "{from}");
            let item = VALID_IMPL.replacen(from, to, 1);
            assert!(!matches(&item), "{to}");
        }
        let dropped = VALID_IMPL.replace(
            "fn is_connection_active(&self, user_id: &UserId) -> bool { false }",
            "",
        );
        assert!(!matches(&dropped));
    }
}
