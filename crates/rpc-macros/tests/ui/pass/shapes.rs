//! Every supported method shape compiles, and the generated items have the documented names.
use keel::Bytes;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub enum MoveError {
    OffTheMap,
}

/// A service with every shape.
#[keel::service]
pub trait Shapes {
    async fn nothing(&self);
    async fn one(&self, a: u8) -> u8;
    async fn many(&self, a: String, b: Vec<u64>, c: Option<Point>, d: Bytes) -> (u8, String);
    #[idempotent]
    async fn read(&self) -> Point;
    #[deadline(2s)]
    async fn slow(&self) -> Result<Point, MoveError>;
    #[idempotent]
    #[deadline(150ms)]
    async fn both(&self, p: Point) -> Result<(), MoveError>;
    /// Fails with a wire status: the client returns `Result<Point, keel::Error>`.
    async fn status(&self) -> Result<Point, keel::Status>;
    async fn bare_status(&self, a: u8) -> std::result::Result<u8, Status>;
}

use keel::Status;

struct Impl;

impl Shapes for Impl {
    async fn nothing(&self) {}
    async fn one(&self, a: u8) -> u8 {
        a
    }
    async fn many(&self, a: String, _b: Vec<u64>, _c: Option<Point>, _d: Bytes) -> (u8, String) {
        (1, a)
    }
    async fn read(&self) -> Point {
        Point { x: 0, y: 0 }
    }
    async fn slow(&self) -> Result<Point, MoveError> {
        Err(MoveError::OffTheMap)
    }
    async fn status(&self) -> Result<Point, keel::Status> {
        Err(Status::new(keel::StatusCode::NOT_FOUND, "none").not_executed())
    }
    async fn bare_status(&self, a: u8) -> std::result::Result<u8, Status> {
        Ok(a)
    }
    async fn both(&self, _p: Point) -> Result<(), MoveError> {
        Ok(())
    }
}

fn main() {
    // A channel is built inside a tokio runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let _inside = runtime.enter();
    let _server = keel::Server::builder().add_service(ShapesServer::new(Impl));
    let channel = keel::Channel::builder("127.0.0.1:1".parse().unwrap()).build();
    let client = ShapesClient::new(channel);
    let _copy = client.with_options(keel::CallOptions::new());
    let _future = async move {
        let _: Result<(), keel::Error> = client.nothing().await;
        let _: Result<Result<Point, MoveError>, keel::Error> = client.slow().await;
        let _: Result<Point, keel::Error> = client.status().await;
        let _: Result<u8, keel::Error> = client.bare_status(1).await;
        let reply: Result<keel::Response<u8>, keel::Error> = client.one_with_metadata(1).await;
        let _: Option<bool> = reply.ok().map(|r| r.replayed());
    };
}
