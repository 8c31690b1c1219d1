//! Emits the rewritten trait, the typed client and the server adapter.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ReturnType, TraitItem};

use crate::parse::{FailoverAttr, HedgeAttr, Method, RetryAttr, Service, is_ours};

pub(crate) fn generate(service: Service, krate: &TokenStream) -> TokenStream {
    let Service { mut item, methods } = service;
    let trait_name = item.ident.clone();
    let service_name = trait_name.unraw().to_string();
    let vis = item.vis.clone();
    let client = format_ident!("{}Client", trait_name);
    let server = format_ident!("{}Server", trait_name);

    // The trait: `async fn` becomes `fn -> impl Future + Send`, so the server can run the calls on
    // any thread; the service is shared by every connection, hence Send + Sync + 'static.
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits.push(syn::parse_quote!('static));
    if item.colon_token.is_none() {
        item.colon_token = Some(Default::default());
    }
    for (trait_item, method) in item.items.iter_mut().zip(&methods) {
        let TraitItem::Fn(f) = trait_item else {
            continue;
        };
        f.attrs.retain(|attr| !is_ours(attr));
        let wire = format!("{service_name}.{}", method.name.unraw());
        let note = format!(" On the wire: `{wire}`.");
        f.attrs.push(syn::parse_quote!(#[doc = ""]));
        f.attrs.push(syn::parse_quote!(#[doc = #note]));
        f.sig.asyncness = None;
        let output = &method.output;
        f.sig.output = ReturnType::Type(
            Default::default(),
            Box::new(syn::parse_quote!(
                impl ::core::future::Future<Output = #output> + ::core::marker::Send
            )),
        );
    }

    let client_methods = methods
        .iter()
        .map(|m| client_method(m, &service_name, krate));
    let registrations = methods
        .iter()
        .map(|m| registration(m, &service_name, krate));
    let client_doc = format!(
        " Typed client of [`{trait_name}`]: one async method per trait method, each returning the \
         method's result or a [`{krate_name}::Error`] with its status and retry-safety outcome.",
        krate_name = "keel"
    );
    let server_doc = format!(
        " Serves an implementation of [`{trait_name}`]: add it to a server with \
         `ServerBuilder::add_service`."
    );

    quote! {
        #item

        #[doc = #client_doc]
        ///
        /// Cheap to clone; clones share the channel's connection. Per-call options (deadline,
        /// metadata) are set with [`with_options`](Self::with_options), which returns a copy, so
        /// the methods keep the trait's signatures.
        #[derive(Clone, Debug)]
        #vis struct #client {
            channel: #krate::Channel,
            options: #krate::CallOptions,
        }

        impl #client {
            /// A client calling over `channel`, with default options.
            #vis fn new(channel: #krate::Channel) -> Self {
                Self { channel, options: #krate::CallOptions::new() }
            }

            /// A copy of this client whose calls use `options` (deadline, metadata). A method's
            /// `#[deadline]` applies only when `options` sets none.
            #[must_use]
            #vis fn with_options(&self, options: #krate::CallOptions) -> Self {
                Self { channel: ::core::clone::Clone::clone(&self.channel), options }
            }

            /// The channel this client calls over.
            #vis fn channel(&self) -> &#krate::Channel {
                &self.channel
            }

            #(#client_methods)*
        }

        #[doc = #server_doc]
        #vis struct #server<S> {
            service: ::std::sync::Arc<S>,
        }

        impl<S: #trait_name> #server<S> {
            /// Serves `service`.
            #vis fn new(service: S) -> Self {
                Self { service: ::std::sync::Arc::new(service) }
            }

            /// Serves a service that is shared elsewhere too.
            #vis fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                Self { service }
            }
        }

        impl<S> ::core::fmt::Debug for #server<S> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(::core::stringify!(#server))
            }
        }

        impl<S: #trait_name> #krate::server::Service for #server<S> {
            fn register(self, builder: #krate::server::ServerBuilder) -> #krate::server::ServerBuilder {
                builder #(#registrations)*
            }
        }
    }
}

fn client_method(method: &Method, service: &str, krate: &TokenStream) -> TokenStream {
    let name = &method.name;
    let with_metadata = format_ident!("{}_with_metadata", name.unraw());
    let wire = format!("{service}.{}", name.unraw());
    // What travels: `T` of a `Result<T, Status>` method, whose status becomes the call's error.
    let value = method.fallible.as_ref().unwrap_or(&method.output);
    let arg_names: Vec<_> = method.args.iter().map(|(n, _)| n).collect();
    let arg_types: Vec<_> = method.args.iter().map(|(_, t)| t).collect();
    let docs: Vec<_> = method
        .item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let defaults = method_defaults(method, krate);
    let args_tuple = args_tuple(method);
    let note = format!(" Calls `{wire}`.");
    let metadata_doc = format!(
        " As [`{name}`](Self::{name}), with the metadata of the reply (`rpc-replayed`, or what \
         the handler set). Calls `{wire}`.",
        name = name.unraw()
    );
    let method_types = quote!(#krate::__private::ClientMethod<#args_tuple, #value>);
    // Spanned where a type that cannot travel is best reported (see `blame`).
    let blame = blame(method);
    let at_blame = respan(krate, blame);
    let checked = quote_spanned!(blame=>
        #at_blame::__private::ClientMethod::<#args_tuple, #value>::checked(#wire)
    );
    let unchecked = quote_spanned!(blame=> #at_blame::__private::ClientMethod::<#args_tuple, #value>::unchecked());
    // The method's types, checked and made once, in one place shared by both client methods (so
    // a type that cannot travel is reported once for the client).
    let types_fn = format_ident!("__{}_types", name.unraw());
    let types = if method.schema_check {
        quote! {
            static METHOD: ::std::sync::OnceLock<#method_types> = ::std::sync::OnceLock::new();
            METHOD.get_or_init(|| #checked)
        }
    } else {
        quote! {
            static METHOD: #method_types = #unchecked;
            &METHOD
        }
    };
    // Both methods call `__private::call` themselves: one async layer each, so the call's large
    // future is not moved once more through a wrapper.
    let call = quote! {
        #krate::__private::call(
            &self.channel,
            #wire,
            &(#(#arg_names,)*),
            ::core::clone::Clone::clone(&self.options),
            #defaults,
            Self::#types_fn(),
        )
        .await
    };
    quote! {
        #[doc(hidden)]
        fn #types_fn() -> &'static #method_types {
            #types
        }

        #(#docs)*
        ///
        #[doc = #note]
        pub async fn #name(&self, #(#arg_names: #arg_types),*)
            -> ::core::result::Result<#value, #krate::Error>
        {
            ::core::result::Result::map(#call, #krate::Response::into_value)
        }

        #[doc = #metadata_doc]
        pub async fn #with_metadata(&self, #(#arg_names: #arg_types),*)
            -> ::core::result::Result<#krate::Response<#value>, #krate::Error>
        {
            #call
        }
    }
}

/// The `MethodDefaults` expression of a method's attributes.
fn method_defaults(method: &Method, krate: &TokenStream) -> TokenStream {
    let idempotent = method.idempotent;
    let dedupe = method.dedupe;
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let deadline = match method.deadline {
        Some(d) => {
            let ms = millis(d);
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms)))
        }
        None => quote!(::core::option::Option::None),
    };
    let retry = match method.retry {
        RetryAttr::Channel => quote!(#krate::__private::RetryDefault::Channel),
        RetryAttr::Off => quote!(#krate::__private::RetryDefault::Off),
        RetryAttr::MaxAttempts(n) => quote!(#krate::__private::RetryDefault::MaxAttempts(#n)),
    };
    let hedge = match method.hedge {
        None => quote!(::core::option::Option::None),
        Some(HedgeAttr::After(d)) => {
            let ms = millis(d);
            quote!(::core::option::Option::Some(#krate::__private::HedgeDefault::AfterMillis(#ms)))
        }
        Some(HedgeAttr::Percentile(p)) => {
            quote!(::core::option::Option::Some(#krate::__private::HedgeDefault::Percentile(#p)))
        }
    };
    let failover = match method.failover {
        FailoverAttr::Channel => quote!(#krate::__private::FailoverDefault::Channel),
        FailoverAttr::FailFast => quote!(#krate::__private::FailoverDefault::FailFast),
        FailoverAttr::Fork(n) => quote!(#krate::__private::FailoverDefault::Fork(#n)),
    };
    quote! {
        #krate::__private::MethodDefaults {
            idempotent: #idempotent,
            deadline: #deadline,
            dedupe: #dedupe,
            retry: #retry,
            hedge: #hedge,
            failover: #failover,
        }
    }
}

fn registration(method: &Method, service: &str, krate: &TokenStream) -> TokenStream {
    let name = &method.name;
    let wire = format!("{service}.{}", name.unraw());
    let arg_names: Vec<_> = method.args.iter().map(|(n, _)| n).collect();
    let args_tuple = args_tuple(method);
    let value = method.fallible.as_ref().unwrap_or(&method.output);
    let schema_check = method.schema_check;
    // The whole call spanned in the signature, so that a type that cannot travel is reported
    // there (see `blame`).
    let blame = blame(method);
    let run = if method.fallible.is_some() {
        quote_spanned!(blame=> service.#name(#(#arg_names),*).await)
    } else {
        quote_spanned!(blame=> ::core::result::Result::Ok(service.#name(#(#arg_names),*).await))
    };
    let service = quote!(<::std::sync::Arc<S> as ::core::clone::Clone>::clone(
        &self.service
    ));
    let closure = quote_spanned! {blame=>
        |service: ::std::sync::Arc<S>, (#(#arg_names,)*): #args_tuple| async move { #run }
    };
    let at_blame = respan(krate, blame);
    let handler = quote_spanned! {blame=>
        #at_blame::__private::handler::<_, #args_tuple, #value, _, _>(
            #service, #wire, #schema_check, #closure,
        )
    };
    quote_spanned! {blame=>
        .register(#wire, #handler)
    }
}

/// `tokens` with every span set to `span` (the facade's path, to be reported at a user's type).
fn respan(tokens: &TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(&group.stream(), span));
                inner.set_span(span);
                tree = proc_macro2::TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Where the generated calls that need a method's types to travel are spanned, so that the
/// compiler's "cannot travel" error points into the method's signature: at its result type when
/// it declares one, else at its first argument's type. (The message names the offending type.)
fn blame(method: &Method) -> proc_macro2::Span {
    match (&method.item.sig.output, method.args.first()) {
        (ReturnType::Type(_, ty), _) => ty.span(),
        (ReturnType::Default, Some((_, first))) => first.span(),
        (ReturnType::Default, None) => method.name.span(),
    }
}

/// The tuple of a method's argument types, spanned at its first argument's type: an argument type
/// that cannot travel is reported there (with its own name), not at the `#[service]` line.
fn args_tuple(method: &Method) -> TokenStream {
    let types = method.args.iter().map(|(_, ty)| ty);
    match method.args.first() {
        Some((_, first)) => quote_spanned!(first.span()=> (#(#types,)*)),
        None => quote!(()),
    }
}
