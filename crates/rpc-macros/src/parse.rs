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
    /// `T` of a return type written `Result<T, Status>` (or `keel::Status`): the method fails
    /// with a wire status, and `T` is what travels.
    pub(crate) fallible: Option<Type>,
    pub(crate) idempotent: bool,
    pub(crate) deadline: Option<Duration>,
    pub(crate) dedupe: bool,
    pub(crate) retry: RetryAttr,
    pub(crate) hedge: Option<HedgeAttr>,
    pub(crate) failover: FailoverAttr,
    /// `#[no_schema_check]`.
    pub(crate) schema_check: bool,
}

/// A method's `#[failfast]` or `#[fork(N)]`.
#[derive(Clone, Copy, Default)]
pub(crate) enum FailoverAttr {
    /// The channel's failover.
    #[default]
    Channel,
    /// `#[failfast]`.
    FailFast,
    /// `#[fork(N)]`.
    Fork(u32),
}

/// A method's `#[retry(...)]` or `#[no_retry]`.
#[derive(Clone, Copy, Default)]
pub(crate) enum RetryAttr {
    /// The channel's policy.
    #[default]
    Channel,
    /// `#[no_retry]`.
    Off,
    /// `#[retry(max_attempts = N)]`.
    MaxAttempts(u32),
}

/// A method's `#[hedge(after = 20ms)]` or `#[hedge(percentile = 95)]`.
#[derive(Clone, Copy)]
pub(crate) enum HedgeAttr {
    After(Duration),
    Percentile(u32),
}

/// The method attributes read from one method.
#[derive(Default)]
struct Attrs {
    idempotent: bool,
    deadline: Option<Duration>,
    dedupe: bool,
    retry: RetryAttr,
    hedge: Option<HedgeAttr>,
    failover: FailoverAttr,
    no_schema_check: bool,
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
    let fallible = status_result(&output);
    let attrs = method_attributes(&method.attrs, errors);
    if errors.0.is_some() && !before {
        return None;
    }
    Some(Method {
        item: method.clone(),
        name: sig.ident.clone(),
        args,
        output,
        fallible,
        idempotent: attrs.idempotent,
        deadline: attrs.deadline,
        dedupe: attrs.dedupe,
        retry: attrs.retry,
        hedge: attrs.hedge,
        failover: attrs.failover,
        schema_check: !attrs.no_schema_check,
    })
}

/// `T` if `ty` is written `Result<T, Status>`: `Result` with any path (`std::result::Result`),
/// and the error `Status` alone or keel's own (`keel::Status`, `keel::core::Status`,
/// `rpc_core::Status`). A type of the application's that is named `Status` too can be returned
/// as a value by writing another path to it (`crate::Status`).
fn status_result(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if path.qself.is_some() || last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let (Some(value), Some(Type::Path(error)), None) = (types.next(), types.next(), types.next())
    else {
        return None;
    };
    let names: Vec<String> = error
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let ours = matches!(
        names.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ["Status"] | ["keel", "Status"] | ["keel", "core", "Status"] | ["rpc_core", "Status"]
    );
    (ours && error.qself.is_none()).then(|| value.clone())
}

/// Reads a duration written `200ms` or `2s`.
fn duration(lit: &LitInt) -> Option<Duration> {
    match (lit.base10_parse::<u64>(), lit.suffix()) {
        (Ok(n), "ms") => Some(Duration::from_millis(n)),
        (Ok(n), "s") => Some(Duration::from_secs(n)),
        _ => None,
    }
}

/// Reads `#[retry(max_attempts = 4)]`.
fn retry_attribute(attr: &Attribute, errors: &mut Errors) -> RetryAttr {
    let mut attempts = None;
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("max_attempts") {
            let lit: LitInt = meta.value()?.parse()?;
            match lit.base10_parse::<u32>() {
                Ok(n @ 1..=5) => attempts = Some(n),
                _ => return Err(meta.error("max_attempts is between 1 and 5")),
            }
            Ok(())
        } else {
            Err(meta.error("write `#[retry(max_attempts = 4)]` (1 to 5), or `#[no_retry]`"))
        }
    });
    match (result, attempts) {
        (Ok(()), Some(n)) => RetryAttr::MaxAttempts(n),
        (Ok(()), None) => {
            errors.push(attr.span(), "write `#[retry(max_attempts = 4)]` (1 to 5)");
            RetryAttr::Channel
        }
        (Err(err), _) => {
            errors.push(err.span(), err);
            RetryAttr::Channel
        }
    }
}

/// Reads `#[hedge(after = 20ms)]` or `#[hedge(percentile = 95)]`.
fn hedge_attribute(attr: &Attribute, errors: &mut Errors) -> Option<HedgeAttr> {
    let mut hedge = None;
    let result = attr.parse_nested_meta(|meta| {
        let lit: LitInt = meta.value()?.parse()?;
        if meta.path.is_ident("after") {
            match duration(&lit) {
                Some(d) => hedge = Some(HedgeAttr::After(d)),
                None => {
                    return Err(syn::Error::new(
                        lit.span(),
                        "write the delay as `20ms` or `1s`",
                    ));
                }
            }
        } else if meta.path.is_ident("percentile") {
            match lit.base10_parse::<u32>() {
                Ok(p @ 1..=100) => hedge = Some(HedgeAttr::Percentile(p)),
                _ => {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the percentile is between 1 and 100",
                    ));
                }
            }
        } else {
            return Err(meta.error("write `#[hedge(after = 20ms)]` or `#[hedge(percentile = 95)]`"));
        }
        Ok(())
    });
    match result {
        Ok(()) if hedge.is_some() => hedge,
        Ok(()) => {
            errors.push(
                attr.span(),
                "write `#[hedge(after = 20ms)]` or `#[hedge(percentile = 95)]`",
            );
            None
        }
        Err(err) => {
            errors.push(err.span(), err);
            None
        }
    }
}

/// Reads `#[idempotent]`, `#[deadline(200ms)]` (units `ms` and `s`), `#[dedupe]`,
/// `#[retry(max_attempts = N)]`, `#[no_retry]`, `#[hedge(...)]`, `#[failfast]`, `#[fork(N)]` and
/// `#[no_schema_check]`.
fn method_attributes(attrs: &[Attribute], errors: &mut Errors) -> Attrs {
    let mut out = Attrs::default();
    let mut hedge_span = None;
    let mut fork_span = None;
    let mut dedupe_span = None;
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("failfast") {
            if let Err(err) = attr.meta.require_path_only() {
                errors.push(err.span(), "`#[failfast]` takes no arguments");
            }
            out.failover = FailoverAttr::FailFast;
        } else if path.is_ident("fork") {
            fork_span = Some(attr.span());
            match attr
                .parse_args::<LitInt>()
                .map(|lit| (lit.base10_parse::<u32>(), lit.span()))
            {
                Ok((Ok(n @ 2..=8), _)) => out.failover = FailoverAttr::Fork(n),
                Ok((_, span)) => errors.push(span, "fork to 2 to 8 endpoints: `#[fork(2)]`"),
                Err(_) => errors.push(attr.span(), "write `#[fork(2)]` (2 to 8 endpoints)"),
            }
        } else if path.is_ident("idempotent")
            || path.is_ident("dedupe")
            || path.is_ident("no_retry")
            || path.is_ident("no_schema_check")
        {
            if let Err(err) = attr.meta.require_path_only() {
                let name = path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                errors.push(err.span(), format!("`#[{name}]` takes no arguments"));
            }
            if path.is_ident("idempotent") {
                out.idempotent = true;
            } else if path.is_ident("dedupe") {
                out.dedupe = true;
                dedupe_span = Some(attr.span());
            } else if path.is_ident("no_schema_check") {
                out.no_schema_check = true;
            } else {
                out.retry = RetryAttr::Off;
            }
        } else if path.is_ident("deadline") {
            match attr.parse_args::<LitInt>() {
                Ok(lit) => match duration(&lit) {
                    Some(d) => out.deadline = Some(d),
                    None => errors.push(lit.span(), "write the deadline as `200ms` or `2s`"),
                },
                Err(_) => errors.push(
                    attr.span(),
                    "write the deadline as `#[deadline(200ms)]` or `#[deadline(2s)]`",
                ),
            }
        } else if path.is_ident("retry") {
            out.retry = retry_attribute(attr, errors);
        } else if path.is_ident("hedge") {
            out.hedge = hedge_attribute(attr, errors);
            hedge_span = Some(attr.span());
        } else if let Some(name) = path.get_ident().map(ToString::to_string)
            && !BUILT_IN.contains(&name.as_str())
        {
            errors.push(path.span(), unknown_attribute(&name));
        }
    }
    if let (Some(span), false) = (hedge_span, out.idempotent) {
        errors.push(
            span,
            "`#[hedge]` needs `#[idempotent]`: a hedge may run the method twice",
        );
    }
    if let (Some(span), false) = (fork_span, out.idempotent) {
        errors.push(
            span,
            "`#[fork]` needs `#[idempotent]`: forking runs the method on several servers",
        );
    }
    if let (Some(span), true) = (dedupe_span, out.idempotent) {
        errors.push(
            span,
            "`#[dedupe]` is for methods that are not `#[idempotent]`: servers dedupe only those",
        );
    }
    out
}

/// The attributes of Rust itself that a trait method may carry, passed through untouched. Any
/// other single-name attribute is a mistake (`#[timeout]`); attributes with a path
/// (`#[tracing::instrument]`, `#[rustfmt::skip]`) belong to someone else and pass through too.
const BUILT_IN: &[&str] = &[
    "doc",
    "allow",
    "warn",
    "deny",
    "forbid",
    "expect",
    "cfg",
    "cfg_attr",
    "deprecated",
    "must_use",
    "inline",
    "cold",
    "track_caller",
];

/// The error for an attribute keel does not know: every attribute it does, and the one meant
/// when the name is a common synonym.
fn unknown_attribute(name: &str) -> String {
    let meant = match name {
        "timeout" | "time_limit" => Some("`#[deadline(2s)]` sets a method's default deadline"),
        "retries" | "retry_policy" | "max_attempts" => {
            Some("`#[retry(max_attempts = 3)]` sets its retries")
        }
        "idempotency" | "safe" | "pure" => Some("`#[idempotent]` marks a method safe to run twice"),
        "dedup" | "deduplicate" | "once" => {
            Some("`#[dedupe]` makes a server run a retried call once")
        }
        _ => None,
    };
    let mut message = format!(
        "unknown attribute `#[{name}]`; keel's method attributes are `#[idempotent]`, \
         `#[deadline(200ms)]`, `#[retry(max_attempts = 3)]`, `#[no_retry]`, \
         `#[hedge(after = 20ms)]` or `#[hedge(percentile = 95)]`, `#[dedupe]`, `#[failfast]`, \
         `#[fork(2)]` and `#[no_schema_check]`"
    );
    if let Some(meant) = meant {
        message.push_str("; ");
        message.push_str(meant);
    }
    message
}

/// Whether an attribute is one of ours, to be removed from the emitted trait.
pub(crate) fn is_ours(attr: &Attribute) -> bool {
    [
        "idempotent",
        "deadline",
        "dedupe",
        "retry",
        "no_retry",
        "no_schema_check",
        "hedge",
        "failfast",
        "fork",
    ]
    .iter()
    .any(|name| attr.path().is_ident(name))
}
