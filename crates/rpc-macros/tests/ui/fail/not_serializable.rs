//! An argument or result type that cannot travel is named at its own span.

pub struct Handle(u64);

#[keel::service]
pub trait Files {
    async fn open(&self, path: String) -> Handle;
    async fn close(&self, handle: Handle);
}

fn main() {}
