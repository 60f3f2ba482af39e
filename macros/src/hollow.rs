//! Method bodies are never checked, only signatures: parsing them (and
//! printing them back) was most of the attribute's cost on a real impl. So
//! the impl is parsed with every method body emptied, and the bodies are put
//! back only where a parsed method is emitted (the fallback impl of a build
//! that already failed); a valid impl is emitted as the user's own tokens.

use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};
use syn::{ImplItem, ItemImpl};

/// The item as the user wrote it, and the bodies [`hollow`] took out of its
/// copy, by method name, in order.
pub(crate) struct Original {
    pub tokens: TokenStream,
    bodies: Vec<(String, Group)>,
}

/// `item` with the body of every `fn` directly inside an `impl`'s braces
/// replaced by `{}` (same span), and those bodies. Anything that is not an
/// impl comes back unchanged.
pub(crate) fn hollow(item: TokenStream) -> (TokenStream, Original) {
    let original = item.clone();
    let mut bodies = Vec::new();
    let mut is_impl = false;
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let last = tokens.len().saturating_sub(1);
    let out = tokens
        .into_iter()
        .enumerate()
        .map(|(index, token)| match token {
            TokenTree::Ident(ident) => {
                is_impl |= ident == "impl";
                TokenTree::Ident(ident)
            }
            // the impl's own braces are its last token
            TokenTree::Group(group)
                if is_impl && index == last && group.delimiter() == Delimiter::Brace =>
            {
                let mut emptied =
                    Group::new(Delimiter::Brace, hollow_items(group.stream(), &mut bodies));
                emptied.set_span(group.span());
                TokenTree::Group(emptied)
            }
            other => other,
        })
        .collect();
    (
        out,
        Original {
            tokens: original,
            bodies,
        },
    )
}

/// The impl's items with each `fn`'s first brace group after its name
/// emptied.
fn hollow_items(items: TokenStream, bodies: &mut Vec<(String, Group)>) -> TokenStream {
    // `Some(name)` between `fn name` and its body
    let mut in_signature: Option<String> = None;
    let mut after_fn = false;
    items
        .into_iter()
        .map(|token| match token {
            TokenTree::Ident(ident) => {
                if after_fn {
                    in_signature = Some(ident.to_string());
                }
                after_fn = ident == "fn";
                TokenTree::Ident(ident)
            }
            TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {
                after_fn = false;
                match in_signature.take() {
                    Some(name) => {
                        let mut empty = Group::new(Delimiter::Brace, TokenStream::new());
                        empty.set_span(group.span());
                        bodies.push((name, group));
                        TokenTree::Group(empty)
                    }
                    None => TokenTree::Group(group),
                }
            }
            TokenTree::Punct(punct) => {
                after_fn = false;
                if punct.as_char() == ';' {
                    in_signature = None;
                }
                TokenTree::Punct(punct)
            }
            other => {
                after_fn = false;
                other
            }
        })
        .collect()
}

impl Original {
    /// Puts each method's body back into the parsed `item`.
    pub(crate) fn restore(mut self, item: &mut ItemImpl) {
        for impl_item in &mut item.items {
            let ImplItem::Fn(function) = impl_item else {
                continue;
            };
            let name = function.sig.ident.to_string();
            let Some(position) = self.bodies.iter().position(|(n, _)| *n == name) else {
                continue;
            };
            let (_, body) = self.bodies.remove(position);
            function.block =
                syn::parse2(TokenTree::Group(body.clone()).into()).unwrap_or_else(|_| {
                    // a body that does not parse: kept as tokens, so rustc
                    // reports it where it is
                    syn::Block {
                        brace_token: syn::token::Brace(body.delim_span()),
                        stmts: vec![syn::Stmt::Item(syn::Item::Verbatim(body.stream()))],
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_method_bodies_are_emptied_and_restored_in_place() {
        let source = "impl T for S { const C: u8 = { 1 }; fn a(&self) -> u8 { 1 + 1 } fn b(&self) where Self: Sized { let x = { 2 }; } fn c(); }";
        let (hollowed, bodies) = hollow(source.parse().unwrap());
        assert_eq!(
            hollowed.to_string(),
            "impl T for S { const C : u8 = { 1 } ; fn a (& self) -> u8 { } fn b (& self) where Self : Sized { } fn c () ; }"
        );
        let mut parsed: ItemImpl = syn::parse2(hollowed).unwrap();
        bodies.restore(&mut parsed);
        let original: ItemImpl = syn::parse_str(source).unwrap();
        assert_eq!(
            quote::quote!(#parsed).to_string(),
            quote::quote!(#original).to_string()
        );
    }

    #[test]
    fn anything_but_an_impl_is_untouched() {
        let source = "struct S { a : u8 }";
        let (same, original) = hollow(source.parse().unwrap());
        assert_eq!(same.to_string(), source);
        assert!(original.bodies.is_empty());
    }
}
