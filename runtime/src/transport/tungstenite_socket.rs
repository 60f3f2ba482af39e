//! [`TungsteniteSocket`]: a `tokio_tungstenite::WebSocketStream` as a
//! [`WireSocket`](super::WireSocket). Both adapters serve their sockets
//! through it: the tokio-tungstenite one over the accepted stream, the axum
//! one over hyper's upgraded connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use super::wire::{WireError, WireMessage};
use crate::close::reason_on_the_wire;
use crate::connection::{CloseReason, TextFrame};

/// A `tokio_tungstenite::WebSocketStream` as a [`WireSocket`](super::WireSocket).
#[derive(Debug)]
pub struct TungsteniteSocket<S>(WebSocketStream<S>);

impl<S> TungsteniteSocket<S> {
    /// Wraps an upgraded stream. Configure its size limits
    /// (`max_message_size`, `max_frame_size`) as in the service's
    /// [`TransportConfig`](super::TransportConfig).
    pub fn new(socket: WebSocketStream<S>) -> Self {
        TungsteniteSocket(socket)
    }
}

/// Maps tungstenite's error (both adapters run on tungstenite) to the
/// driver's: the size limit and a closed connection are told apart.
fn from_tungstenite_error(error: tungstenite::Error) -> WireError {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            WireError::MessageTooLarge {
                size,
                max: max_size,
            }
        }
        Error::ConnectionClosed | Error::AlreadyClosed => WireError::Closed,
        Error::Utf8(detail) => WireError::InvalidPayload(detail),
        // A closing handshake the peer skipped is a disconnect, not a
        // violation worth a close frame.
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            WireError::Closed
        }
        Error::Protocol(violation) => WireError::Protocol(violation.to_string()),
        other => WireError::Other(Box::new(other)),
    }
}

/// `None` for what reading never yields.
fn to_wire(message: Message) -> Option<WireMessage> {
    Some(match message {
        // tungstenite checked it (an invalid one is `Error::Utf8`, closed
        // with 1007): not checked a second time.
        Message::Text(text) => WireMessage::Text(TextFrame::from_utf8_bytes(text)),
        Message::Binary(bytes) => WireMessage::Binary(bytes),
        Message::Ping(bytes) => WireMessage::Ping(bytes),
        Message::Pong(bytes) => WireMessage::Pong(bytes),
        Message::Close(frame) => WireMessage::Close(
            frame.map(|f| CloseReason::new(u16::from(f.code), f.reason.as_str().to_owned())),
        ),
        // Never produced when reading.
        Message::Frame(_) => return None,
    })
}

fn from_wire(message: WireMessage) -> Result<Message, WireError> {
    Ok(match message {
        // A `TextFrame` is UTF-8 by construction; `Message::Text` would need
        // a `Utf8Bytes`, whose only safe constructor from shared bytes checks
        // them again, once per recipient socket. A data frame with the text
        // opcode is what tungstenite writes for `Message::Text` anyway.
        WireMessage::Text(text) => Message::Frame(Frame::message(
            text.into_bytes(),
            OpCode::Data(Data::Text),
            true,
        )),
        WireMessage::Binary(bytes) => Message::Binary(bytes),
        WireMessage::Ping(bytes) => Message::Ping(bytes),
        WireMessage::Pong(bytes) => Message::Pong(bytes),
        WireMessage::Close(reason) => Message::Close(reason.map(|r| CloseFrame {
            code: CloseCode::from(r.code),
            reason: reason_on_the_wire(&r.reason).into(),
        })),
    })
}

impl<S> Stream for TungsteniteSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<WireMessage, WireError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match Pin::new(&mut self.0).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => {
                    Poll::Ready(Some(Err(from_tungstenite_error(error))))
                }
                Poll::Ready(Some(Ok(message))) => match to_wire(message) {
                    Some(item) => Poll::Ready(Some(Ok(item))),
                    None => continue,
                },
            };
        }
    }
}

impl<S> Sink<WireMessage> for TungsteniteSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = WireError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0)
            .poll_ready(cx)
            .map_err(from_tungstenite_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WireMessage) -> Result<(), WireError> {
        Pin::new(&mut self.0)
            .start_send(from_wire(item)?)
            .map_err(from_tungstenite_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0)
            .poll_flush(cx)
            .map_err(from_tungstenite_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0)
            .poll_close(cx)
            .map_err(from_tungstenite_error)
    }
}
