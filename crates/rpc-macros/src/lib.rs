//! The `#[service]` attribute of keel: a typed client and a server adapter from one trait.
//!
//! Use it through the facade, as `#[keel::service]`; the facade's documentation has the full
//! example. For a trait `Echo` it emits:
//! - the trait itself, each `async fn` turned into `fn ... -> impl Future<Output = T> + Send` (an
//!   implementation still writes `async fn`), with `Send + Sync + 'static` added as supertraits;
//! - `EchoClient`, with one async method per trait method returning `Result<T, keel::Error>`;
//! - `EchoServer<S>`, which registers every method of an implementation `S` on a server.
//!
//! Method attributes: `#[idempotent]` sets the wire's IDEMPOTENT flag, and `#[deadline(200ms)]`
//! (or `2s`) is the method's default deadline. `#[retry(max_attempts = N)]`, `#[no_retry]`,
//! `#[hedge(...)]` and `#[dedupe]` set its retries, `#[failfast]` and `#[fork(N)]` its failover
//! across endpoints (`#[fork]` and `#[hedge]` need `#[idempotent]`). `#[no_schema_check]` turns off
//! the check that client and server agree on the method's types (its schema fingerprint, sent with
//! every call). Methods are named `Echo.method` on the wire.
//! `#[service(crate = "path")]` names the facade when it cannot be found in Cargo.toml.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod generate;
mod parse;

use proc_macro::TokenStream;
use proc_macro_crate::{FoundCrate, crate_name};
use quote::quote;
use syn::{ItemTrait, LitStr, parse_macro_input};

/// The `#[service]` attribute, used as `#[keel::service]`; `keel::service` documents every method
/// attribute, with an example of each.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let krate = match facade_path(attr) {
        Ok(krate) => krate,
        Err(err) => return err.to_compile_error().into(),
    };
    let item = parse_macro_input!(item as ItemTrait);
    match parse::parse(item) {
        Ok(service) => generate::generate(service, &krate).into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The path of the facade: `#[service(crate = "...")]`, else its name in the user's Cargo.toml
/// (which may be renamed), else `::keel`.
fn facade_path(attr: TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let mut explicit: Option<syn::Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let lit: LitStr = meta.value()?.parse()?;
            explicit = Some(lit.parse()?);
            Ok(())
        } else {
            Err(meta.error("the only argument of #[service] is `crate = \"path\"`"))
        }
    });
    syn::parse::Parser::parse(parser, attr)?;
    if let Some(path) = explicit {
        return Ok(quote!(#path));
    }
    Ok(match crate_name("keel") {
        Ok(FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, proc_macro2::Span::call_site());
            quote!(::#ident)
        }
        // Inside keel's own package (its examples, tests and doctests) and by default.
        Ok(FoundCrate::Itself) | Err(_) => quote!(::keel),
    })
}
