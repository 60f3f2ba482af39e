//! What both accept loops (the axum listener and the tungstenite `serve`)
//! do when `accept` fails.

use std::io;
use std::time::Duration;

/// `EMFILE` and `ENFILE`: no descriptor left for the process or the system.
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Handles a failed `accept`: a connection refused, aborted or reset
/// before it was taken is the client's business; anything else is logged
/// as an error, and the loop pauses before trying again. Out of
/// descriptors, new clients wait in the kernel's listen queue (their
/// connect succeeded, nothing answers), a silent stall from their side:
/// the error says so, and how to turn it into `503` answers instead.
pub(crate) async fn accept_failed(error: &io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    if out_of_descriptors(error) {
        tracing::error!(%error,
            "cannot accept: the process is out of file descriptors; new clients wait unanswered in the listen queue until a connection closes. Set WebSocketServiceBuilder::max_connections below the descriptor limit (ulimit -n) so that they are answered 503 with Retry-After instead");
        // As hyper does: a descriptor frees only when a connection ends.
        tokio::time::sleep(Duration::from_secs(1)).await;
    } else {
        tracing::error!(%error, "accept failed; retrying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
