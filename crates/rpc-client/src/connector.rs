//! How a connection's byte stream is made: TCP by default, or anything that reads and writes
//! bytes (TLS over TCP, a Unix socket, an in-memory pipe in a test). The protocol runs on top
//! unchanged: the handshake, framing, heartbeats and every limit.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connected byte stream, boxed.
pub type BoxIo = Box<dyn Io>;

/// The future a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// Makes the byte stream to one endpoint address; set with
/// [`ChannelBuilder::connector`](crate::ChannelBuilder::connector). The channel bounds each call
/// by its connect timeout, and performs the keel handshake on the stream once it is there.
///
/// ```
/// use std::net::SocketAddr;
/// use keel::client::{BoxIo, ConnectFuture, Connector};
///
/// /// Connects to every address through an in-memory pipe served by a task of its own.
/// struct InMemory(keel::server::Server);
///
/// impl Connector for InMemory {
///     fn connect(&self, addr: SocketAddr) -> ConnectFuture {
///         let (ours, theirs) = tokio::io::duplex(64 * 1024);
///         let server = self.0.clone();
///         tokio::spawn(async move { server.serve_io(theirs, addr).await });
///         Box::pin(async move { Ok(Box::new(ours) as BoxIo) })
///     }
/// }
/// ```
pub trait Connector: Send + Sync + 'static {
    /// A byte stream to `addr`.
    fn connect(&self, addr: SocketAddr) -> ConnectFuture;
}

/// The default [`Connector`]: a TCP connection with Nagle's algorithm off (`TCP_NODELAY`), since
/// keel coalesces small frames itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

/// The channel's connector, shared by its endpoints.
#[derive(Clone)]
pub(crate) struct SharedConnector(pub(crate) Arc<dyn Connector>);

impl Default for SharedConnector {
    fn default() -> Self {
        Self(Arc::new(TcpConnector))
    }
}

impl fmt::Debug for SharedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}
