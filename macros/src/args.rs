//! The attribute's arguments: `name`, `mode`, `crate`, `factory`, `register`,
//! `readiness`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{LitBool, LitStr, Path, Type};

const VALID: &str = "`name = \"...\"`, `mode = \"unified\" | \"isolated\"`, `crate = path`, `factory = false`, `register = ConcreteType`, `readiness = Self::method`";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Unified,
    Isolated,
}

/// The parsed arguments, with defaults where an argument was absent or wrong.
pub(crate) struct Args {
    pub name: Option<LitStr>,
    pub mode: Mode,
    pub krate: Path,
    pub factory: bool,
    /// `register = Type` and the span of the argument, for a generic impl.
    pub register: Option<(Type, Span)>,
    /// `readiness = path`: a `fn(&Self) -> Readiness` the manager reports
    /// its readiness with.
    pub readiness: Option<Path>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            name: None,
            mode: Mode::Unified,
            krate: syn::parse_quote!(::websocket_manager),
            factory: true,
            register: None,
            readiness: None,
        }
    }
}

/// Parses the arguments. Problems are returned next to usable arguments, so
/// the impl is still checked and every problem is reported in one build.
pub(crate) fn parse(attr: TokenStream) -> (Args, Option<syn::Error>) {
    let mut args = Args::default();
    let mut errors: Option<syn::Error> = None;
    let mut seen: Vec<String> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        if seen.contains(&key) {
            return Err(meta.error(format!("`{key}` is given more than once")));
        }
        match key.as_str() {
            "name" => {
                let lit: LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(e.span(), "`name` takes a string: `name = \"my-manager\"`")
                })?;
                let value = lit.value();
                if value.trim().is_empty() || value.chars().any(char::is_control) {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`name` must be non-empty and free of control characters",
                    ));
                }
                args.name = Some(lit);
            }
            "mode" => {
                let lit: LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`mode` takes a string: `mode = \"unified\"` or `mode = \"isolated\"`",
                    )
                })?;
                args.mode = match lit.value().as_str() {
                    "unified" => Mode::Unified,
                    "isolated" => Mode::Isolated,
                    other => {
                        let hint = crate::suggest::closest(
                            other,
                            ["unified", "isolated"].into_iter().map(String::from),
                        )
                        .map(|m| format!("did you mean `\"{m}\"`? "))
                        .unwrap_or_default();
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown mode `{other}`; {hint}expected `\"unified\"` (one instance shared by all users) or `\"isolated\"` (one instance per user)"
                            ),
                        ));
                    }
                };
            }
            "crate" => {
                let value = meta.value()?;
                args.krate = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse()?
                } else {
                    value.parse::<Path>()?
                };
            }
            "factory" => {
                let lit: LitBool = meta
                    .value()?
                    .parse()
                    .map_err(|e| syn::Error::new(e.span(), "`factory` takes `true` or `false`"))?;
                args.factory = lit.value;
            }
            "register" => {
                let span = meta.path.span_of_ident();
                let ty: Type = meta.value()?.parse()?;
                args.register = Some((ty, span));
            }
            "readiness" => {
                let path: Path = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`readiness` takes the path of a method `fn(&self) -> Readiness`: `readiness = Self::readiness`",
                    )
                })?;
                args.readiness = Some(path);
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown argument `{}`; expected one of {VALID}",
                    path_text(&meta.path)
                )));
            }
        }
        seen.push(key);
        Ok(())
    });
    if let Err(error) = parser.parse2(attr) {
        errors = Some(error);
    }
    (args, errors)
}

fn path_text(path: &Path) -> String {
    crate::types::render_tokens(&quote::quote!(#path))
}

trait SpanOfIdent {
    fn span_of_ident(&self) -> Span;
}

impl SpanOfIdent for Path {
    fn span_of_ident(&self) -> Span {
        self.segments
            .last()
            .map(|s| s.ident.span())
            .unwrap_or_else(Span::call_site)
    }
}
