//! Reads a `#[service]` trait and checks that every method can be called over the wire.

use std::collections::HashSet;
use std::time::Duration;

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, Ident, ItemTrait, LitInt, Pat, ReturnType, TraitItem, TraitItemFn, Type,
};

/// One method of the service.
pub(crate) struct Method {
    pub(crate) item: TraitItemFn,
    pub(crate) name: Ident,
    pub(crate) args: Vec<(Ident, Type)>,
    /// The declared return type; `()` when there is none.
    pub(crate) output: Type,
    pub(crate) idempotent: bool,
    pub(crate) deadline: Option<Duration>,
}

/// The whole service.
pub(crate) struct Service {
    pub(crate) item: ItemTrait,
    pub(crate) methods: Vec<Method>,
}

/// Collects errors so that one compile run reports every problem, each at its own span.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let err = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

pub(crate) fn parse(item: ItemTrait) -> syn::Result<Service> {
    let mut errors = Errors::default();
    if !item.generics.params.is_empty() {
        errors.push(
            item.generics.span(),
            "#[service] traits cannot be generic: both ends must agree on every type",
        );
    }
    let mut seen = HashSet::new();
    let mut methods = Vec::new();
    for trait_item in &item.items {
        let TraitItem::Fn(method) = trait_item else {
            errors.push(
                trait_item.span(),
                "#[service] traits may only contain `async fn` methods",
            );
            continue;
        };
        if let Some(method) = parse_method(method, &mut errors) {
            if !seen.insert(method.name.to_string()) {
                errors.push(
                    method.name.span(),
                    format!(
                        "duplicate method name `{}`: each method needs its own name on the wire",
                        method.name
                    ),
                );
            }
            methods.push(method);
        }
    }
    errors.finish()?;
    Ok(Service { item, methods })
}

fn parse_method(method: &TraitItemFn, errors: &mut Errors) -> Option<Method> {
    let sig = &method.sig;
    let before = errors.0.is_some();
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token.span(),
            format!(
                "`{}` must be an `async fn`: service methods are called over the network",
                sig.ident
            ),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            sig.generics.span(),
            format!(
                "`{}` cannot be generic: a caller and a server must agree on its types",
                sig.ident
            ),
        );
    }
    if method.default.is_some() {
        errors.push(
            method.default.span(),
            "service methods cannot have a default body; implement them in the `impl`",
        );
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.reference.is_none() {
                errors.push(
                    receiver.span(),
                    "service methods take `&self`, not `self` by value: one service serves many calls",
                );
            } else if receiver.mutability.is_some() {
                errors.push(
                    receiver.span(),
                    "service methods take `&self`, not `&mut self`: calls run concurrently",
                );
            }
        }
        _ => errors.push(
            sig.paren_token.span.join(),
            format!("`{}` needs `&self` as its first parameter", sig.ident),
        ),
    }
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(arg) = input else { continue };
        let Pat::Ident(pat) = &*arg.pat else {
            errors.push(
                arg.pat.span(),
                "service method arguments must be plain names, not patterns",
            );
            continue;
        };
        if let Type::Reference(reference) = &*arg.ty {
            errors.push(
                reference.span(),
                "service method arguments must be owned types (they are deserialized from the request)",
            );
            continue;
        }
        args.push((pat.ident.clone(), (*arg.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let (idempotent, deadline) = method_attributes(&method.attrs, errors);
    if errors.0.is_some() && !before {
        return None;
    }
    Some(Method {
        item: method.clone(),
        name: sig.ident.clone(),
        args,
        output,
        idempotent,
        deadline,
    })
}

/// Reads `#[idempotent]` and `#[deadline(200ms)]` (units `ms` and `s`).
fn method_attributes(attrs: &[Attribute], errors: &mut Errors) -> (bool, Option<Duration>) {
    let mut idempotent = false;
    let mut deadline = None;
    for attr in attrs {
        if attr.path().is_ident("idempotent") {
            if let Err(err) = attr.meta.require_path_only() {
                errors.push(err.span(), "`#[idempotent]` takes no arguments");
            }
            idempotent = true;
        } else if attr.path().is_ident("deadline") {
            match attr.parse_args::<LitInt>() {
                Ok(lit) => match (lit.base10_parse::<u64>(), lit.suffix()) {
                    (Ok(n), "ms") => deadline = Some(Duration::from_millis(n)),
                    (Ok(n), "s") => deadline = Some(Duration::from_secs(n)),
                    _ => errors.push(lit.span(), "write the deadline as `200ms` or `2s`"),
                },
                Err(_) => errors.push(
                    attr.span(),
                    "write the deadline as `#[deadline(200ms)]` or `#[deadline(2s)]`",
                ),
            }
        }
    }
    (idempotent, deadline)
}

/// Whether an attribute is one of ours, to be removed from the emitted trait.
pub(crate) fn is_ours(attr: &Attribute) -> bool {
    attr.path().is_ident("idempotent") || attr.path().is_ident("deadline")
}
