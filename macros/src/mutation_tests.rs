//! A bounded property test: thousands of mutated impls through `expand`.
//!
//! Properties: `expand` never panics; for any impl that still parses, its
//! output parses as Rust (errors and fallback included), so the user sees
//! `compile_error!`s and not a macro crash; every mutation that breaks the
//! contract produces at least one error, and the unmutated impl none.

use proc_macro2::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::{ImplItem, ItemImpl};

use crate::expand::expand;
use crate::expand::tests::VALID_IMPL;

/// Cases per property: 500 by default, so `cargo test --workspace` stays
/// quick in debug builds; `.ci/run` sets `WSM_MUTATION_CASES=3000`. The
/// sequence is deterministic, so the default cases are the first of the full
/// run.
fn case_count() -> usize {
    std::env::var("WSM_MUTATION_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}

/// xorshift64*: deterministic, so a failure is reproducible from its case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const TYPES: &[&str] = &[
    "&str",
    "String",
    "u32",
    "&mut UserId",
    "Option<UserId>",
    "HashSet<String>",
    "()",
    "&UserId",
    "Vec<u8>",
    "impl Fn()",
    "dyn Send",
    "[u8; 4]",
    "fn(u8) -> u8",
    "<T as Trait>::Out",
];

const ARGS: &[&str] = &[
    "",
    "name = \"x\"",
    "mode = \"isolated\"",
    "mode = \"bogus\"",
    "nme = 1",
    "factory = false",
    "crate = wsm",
    "crate = \"a::b\"",
    "register = M<u8>",
    "name",
    "mode = 3",
    "factory = \"no\"",
    "name = \"\"",
    "name = \"a\", name = \"b\"",
    "()",
    ",,",
    "crate = 1",
];

/// One semantic mutation of one method; returns whether it must be an error.
fn mutate_method(rng: &mut Rng, item: &mut ItemImpl) -> bool {
    let index = rng.below(item.items.len().max(1));
    let count = item.items.len();
    match rng.below(12) {
        0 if count > 0 => {
            item.items.remove(index);
            true
        }
        1 if count > 0 => {
            let copy = item.items[index].clone();
            item.items.insert(index, copy);
            true
        }
        op => {
            let Some(ImplItem::Fn(function)) = item.items.get_mut(index) else {
                return false;
            };
            let sig = &mut function.sig;
            match op {
                2 => {
                    sig.ident = Ident::new(&format!("{}x", sig.ident), Span::call_site());
                    true
                }
                3 => {
                    sig.asyncness = match sig.asyncness {
                        Some(_) => None,
                        None => Some(Default::default()),
                    };
                    true
                }
                4 => {
                    let ty: syn::Type = syn::parse_str(rng.pick(TYPES)).unwrap();
                    let typed = sig.inputs.iter_mut().filter_map(|a| match a {
                        syn::FnArg::Typed(t) => Some(t),
                        syn::FnArg::Receiver(_) => None,
                    });
                    let mut changed = false;
                    for t in typed.take(1) {
                        changed = crate::types::canonical(&t.ty) != crate::types::canonical(&ty);
                        *t.ty = ty.clone();
                    }
                    changed
                }
                5 => {
                    sig.output = syn::ReturnType::Default;
                    true
                }
                6 => {
                    let receiver: syn::FnArg =
                        syn::parse_str(rng.pick(&["&mut self", "self", "mut self"])).unwrap();
                    if let Some(first) = sig.inputs.first_mut() {
                        *first = receiver;
                    }
                    true
                }
                7 => {
                    sig.generics =
                        syn::parse_str(rng.pick(&["<T>", "<'a>", "<const N: usize>", "<T: Send>"]))
                            .unwrap();
                    true
                }
                8 => {
                    sig.inputs.pop();
                    true
                }
                9 => {
                    sig.safety = syn::Safety::Unsafe(Default::default());
                    true
                }
                _ => {
                    let extra: ImplItem = syn::parse_str(rng.pick(&[
                        "type Extra = u8;",
                        "const EXTRA: u8 = 1;",
                        "fn extra_helper(&self) {}",
                        "m!();",
                    ]))
                    .unwrap();
                    item.items.push(extra);
                    true
                }
            }
        }
    }
}

/// A random token: anything the tokenizer can produce, to feed garbage.
fn random_token(rng: &mut Rng) -> TokenTree {
    match rng.below(6) {
        0 => TokenTree::Ident(Ident::new(
            rng.pick(&["fn", "async", "impl", "self", "x", "Self", "where", "for"]),
            Span::call_site(),
        )),
        1 => TokenTree::Punct(Punct::new(
            rng.pick(&['&', '<', '>', ',', ':', ';', '#', '!', '-', '\'']),
            Spacing::Alone,
        )),
        2 => TokenTree::Literal(proc_macro2::Literal::string("lit")),
        3 => TokenTree::Group(Group::new(Delimiter::Parenthesis, TokenStream::new())),
        4 => TokenTree::Group(Group::new(Delimiter::Brace, quote!(fn))),
        _ => TokenTree::Literal(proc_macro2::Literal::u8_unsuffixed(7)),
    }
}

/// Inserts, deletes or replaces tokens at random depths of the stream.
fn mutate_tokens(rng: &mut Rng, stream: TokenStream, depth: usize) -> TokenStream {
    let mut trees: Vec<TokenTree> = stream.into_iter().collect();
    let edits = rng.below(3) + usize::from(depth == 0);
    for _ in 0..edits {
        if trees.is_empty() {
            trees.push(random_token(rng));
            continue;
        }
        let at = rng.below(trees.len());
        match rng.below(4) {
            0 => trees.insert(at, random_token(rng)),
            1 => {
                trees.remove(at);
            }
            2 => trees[at] = random_token(rng),
            _ => {
                if let TokenTree::Group(group) = &trees[at] {
                    let inner = mutate_tokens(rng, group.stream(), depth + 1);
                    trees[at] = TokenTree::Group(Group::new(group.delimiter(), inner));
                }
            }
        }
    }
    trees.into_iter().collect()
}

fn has_error(output: &TokenStream) -> bool {
    output.to_string().contains("compile_error")
}

#[test]
fn unmutated_impl_expands_without_errors() {
    let output = expand(TokenStream::new(), VALID_IMPL.parse().unwrap());
    assert!(!has_error(&output), "{output}");
    syn::parse2::<syn::File>(output).unwrap();
}

#[test]
fn thousands_of_semantic_mutations_always_yield_parseable_errors() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let base: ItemImpl = syn::parse_str(VALID_IMPL).unwrap();
    let inherent: ItemImpl =
        syn::parse_str(&VALID_IMPL.replace("impl WebSocketManager for Good", "impl Good")).unwrap();
    for case in 0..case_count() {
        let original = if case % 3 == 0 { &inherent } else { &base };
        let mut item = original.clone();
        let mut must_fail = false;
        for _ in 0..=rng.below(3) {
            must_fail |= mutate_method(&mut rng, &mut item);
        }
        // two mutations can cancel out (async toggled twice)
        must_fail &= item.to_token_stream().to_string() != original.to_token_stream().to_string();
        // in the inherent form, extra and renamed methods are allowed
        let checkable = case % 3 != 0;
        let output = expand(TokenStream::new(), item.to_token_stream());
        assert!(!output.is_empty(), "case {case}: empty output");
        if let Err(error) = syn::parse2::<syn::File>(output.clone()) {
            panic!("case {case}: output does not parse: {error}\n{output}");
        }
        if must_fail && checkable {
            assert!(
                has_error(&output),
                "case {case}: mutation not reported\n{}",
                item.to_token_stream()
            );
        }
    }
}

#[test]
fn random_tokens_and_arguments_never_crash_the_macro() {
    let mut rng = Rng(0xfeed_beef_0000_0042);
    let base: TokenStream = VALID_IMPL.parse().unwrap();
    for case in 0..case_count() {
        let item = mutate_tokens(&mut rng, base.clone(), 0);
        let attr: TokenStream = if rng.below(2) == 0 {
            rng.pick(ARGS).parse().unwrap()
        } else {
            let args: TokenStream = rng.pick(ARGS).parse().unwrap();
            mutate_tokens(&mut rng, args, 0)
        };
        let output = expand(attr.clone(), item.clone());
        assert!(!output.is_empty(), "case {case}: empty output");
        // whatever the input, an item that still parses yields output that parses
        if syn::parse2::<syn::Item>(item.clone()).is_ok() {
            if let Err(error) = syn::parse2::<syn::File>(output.clone()) {
                panic!(
                    "case {case}: output does not parse: {error}\nattr: {attr}\nitem: {item}\noutput: {output}"
                );
            }
        } else {
            // Method bodies are not parsed (compile time): a syntax error
            // inside one is reported by the compiler on the user's own
            // tokens, which must then come out unchanged. Anything else
            // unparseable must be our error.
            let carried = output.to_string().contains(&item.to_string());
            assert!(
                has_error(&output) || carried,
                "case {case}: unparseable item without an error\nattr: {attr}\nitem: {item}\noutput: {output}"
            );
        }
    }
}
