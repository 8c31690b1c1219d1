//! The handshake both sides perform before calls flow: prefaces, HELLO, HELLO_ACK or GOAWAY.

use std::time::Duration;

use bytes::BytesMut;
use rpc_codec::{
    DecodeError, Decoded, EncodeError, Frame, FrameDecoder, FrameEncoder, GoAway, GoAwayCode,
    Hello, HelloAck, Settings,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer broke the protocol (bad magic, wrong first frame, no common version...).
    #[error("peer broke the protocol during the handshake")]
    Protocol(#[source] DecodeError),
    /// The peer answered with GOAWAY.
    #[error("peer refused the connection: {code}: {message}")]
    Refused {
        /// The GOAWAY code.
        code: GoAwayCode,
        /// The GOAWAY message.
        message: String,
    },
    /// The handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// Reading or writing failed.
    #[error("transport failed during the handshake")]
    Io(#[from] std::io::Error),
    /// Our own frame could not be encoded (a bug).
    #[error("could not encode the handshake frame")]
    Encode(#[from] EncodeError),
}

/// Reads the next decoded item, reading more bytes as needed. `Ok(None)` at a clean end of stream.
///
/// # Errors
/// The decoder's connection error (an I/O error included).
pub async fn read_item<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Option<Decoded>, DecodeError> {
    loop {
        if let Some(item) = decoder.decode(buf)? {
            return Ok(Some(item));
        }
        buf.reserve(4096);
        if io.read_buf(buf).await? == 0 {
            return decoder.decode_eof(buf);
        }
    }
}

/// Server side: waits for the client's preface and HELLO, then answers with our preface and
/// HELLO_ACK. On a protocol error it sends its preface and GOAWAY with the error's code before
/// returning. [`read_hello`] and [`send_hello_ack`] are its two halves, for a server that decides
/// between them whether to take the connection.
///
/// # Errors
/// [`HandshakeError`]; the caller closes the connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    encoder: &mut FrameEncoder,
    local: Settings,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    let hello = read_hello(io, buf, decoder, encoder, timeout).await?;
    send_hello_ack(io, encoder, local).await?;
    Ok(hello)
}

/// Server side, first half: waits up to `timeout` for the client's preface and HELLO, and records
/// the client's settings in `encoder`. On a protocol error it sends its preface and GOAWAY with the
/// error's code before returning (not when the client closed inside the preface or HELLO).
///
/// # Errors
/// [`HandshakeError`]; the caller closes the connection.
pub async fn read_hello<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    encoder: &mut FrameEncoder,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    let hello = tokio::time::timeout(timeout, read_item(io, buf, decoder))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?;
    match hello {
        Ok(Some(Ok(Frame::Hello(hello)))) => {
            encoder.set_peer_settings(hello.settings);
            Ok(hello)
        }
        Ok(None) => Err(HandshakeError::Closed),
        Err(DecodeError::Io(e)) => Err(HandshakeError::Io(e)),
        // The client closed its side inside the preface or the HELLO: nothing to tell it.
        Err(err @ DecodeError::TruncatedAtEof { .. }) => Err(HandshakeError::Protocol(err)),
        Err(err) => {
            let goaway = GoAway::new(0, err.go_away_code(), err.to_string());
            let _ = send_goaway(io, encoder, goaway).await;
            Err(HandshakeError::Protocol(err))
        }
        // The decoder only yields HELLO before the handshake; anything else is an error above.
        Ok(Some(_)) => Err(HandshakeError::Closed),
    }
}

/// Server side, second half: our preface and HELLO_ACK announcing `local`.
///
/// # Errors
/// The transport's error.
pub async fn send_hello_ack<W: AsyncWrite + Unpin>(
    io: &mut W,
    encoder: &mut FrameEncoder,
    local: Settings,
) -> Result<(), HandshakeError> {
    let mut out = BytesMut::new();
    encoder.encode(Frame::HelloAck(HelloAck::new(local)), &mut out)?;
    io.write_all(&out).await?;
    Ok(())
}

/// Client side: sends our preface and HELLO, then waits for HELLO_ACK (or GOAWAY). When the
/// server breaks the protocol (bad preface, a HELLO_ACK with another version or a repeated
/// setting, any other frame first) or stays silent past `timeout`, it sends GOAWAY with the
/// matching code (`PROTOCOL_ERROR`, `UNSUPPORTED_VERSION`, `CHECKSUM_ERROR`, `HANDSHAKE_TIMEOUT`)
/// before returning, best effort, as docs/PROTOCOL.md §2.2 and §15 ask.
///
/// # Errors
/// [`HandshakeError`]; the caller closes the connection.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    encoder: &mut FrameEncoder,
    local: Settings,
    timeout: Duration,
) -> Result<HelloAck, HandshakeError> {
    let exchange = async {
        let mut out = BytesMut::new();
        encoder.encode(Frame::Hello(Hello::new(local)), &mut out)?;
        io.write_all(&out).await?;
        match read_item(io, buf, decoder).await {
            Ok(Some(Ok(Frame::HelloAck(ack)))) => {
                encoder.set_peer_settings(ack.settings);
                Ok(ack)
            }
            Ok(Some(Ok(Frame::GoAway(goaway)))) => Err(HandshakeError::Refused {
                code: goaway.code,
                message: goaway.message,
            }),
            Ok(None) | Ok(Some(_)) => Err(HandshakeError::Closed),
            Err(DecodeError::Io(e)) => Err(HandshakeError::Io(e)),
            Err(err) => Err(HandshakeError::Protocol(err)),
        }
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)));
    let goaway = match &result {
        // The server closed its side inside a frame: nothing to tell it (§15).
        Err(HandshakeError::Protocol(DecodeError::TruncatedAtEof { .. })) => None,
        Err(HandshakeError::Protocol(err)) => {
            Some(GoAway::new(0, err.go_away_code(), err.to_string()))
        }
        Err(HandshakeError::Timeout(after)) => Some(GoAway::new(
            0,
            GoAwayCode::HANDSHAKE_TIMEOUT,
            format!("no HELLO_ACK within {after:?}"),
        )),
        _ => None,
    };
    if let Some(goaway) = goaway {
        // Best effort, and never a reason to wait: the connection is closed next.
        let _ = tokio::time::timeout(GOAWAY_LINGER, send_goaway(io, encoder, goaway)).await;
    }
    result
}

/// How long a failed handshake spends trying to deliver its GOAWAY.
const GOAWAY_LINGER: Duration = Duration::from_millis(100);

/// Writes a GOAWAY (with our preface, if not yet sent) and flushes it. Best effort: the caller is
/// about to close anyway.
///
/// # Errors
/// The transport's error.
pub async fn send_goaway<W: AsyncWrite + Unpin>(
    io: &mut W,
    encoder: &mut FrameEncoder,
    goaway: GoAway,
) -> Result<(), HandshakeError> {
    let mut out = BytesMut::new();
    encoder.encode(Frame::GoAway(goaway), &mut out)?;
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}
