//! The `#[service]` attribute of keel: a typed client and a server adapter from one trait.
//!
//! Not built yet: this crate holds the place in the workspace. Use it through the `keel` facade.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
