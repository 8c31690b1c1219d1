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
}

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
    async fn both(&self, _p: Point) -> Result<(), MoveError> {
        Ok(())
    }
}

fn main() {
    let _server = keel::Server::builder().add_service(ShapesServer::new(Impl));
    let channel = keel::Channel::builder("127.0.0.1:1".parse().unwrap()).build();
    let client = ShapesClient::new(channel);
    let _copy = client.with_options(keel::CallOptions::new());
    let _future = async move {
        let _: Result<(), keel::Error> = client.nothing().await;
        let _: Result<Result<Point, MoveError>, keel::Error> = client.slow().await;
    };
}
