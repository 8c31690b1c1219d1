//! Generated code names every path absolutely, so it compiles without the prelude.
#![no_implicit_prelude]

#[::keel::service]
pub trait Hygienic {
    async fn echo(&self, text: ::std::string::String) -> ::std::string::String;
}

fn main() {}
