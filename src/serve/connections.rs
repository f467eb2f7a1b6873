//! The server's connections: accepted up to a cap, each served by hyper with
//! a timer, so a client that sends its headers slowly, or keeps an idle
//! keep-alive connection open, is closed after the header-read timeout; a
//! stop closes the listener and lets the connections finish their requests.
//! (`axum::serve` sets no timer, so hyper's header-read timeout never fired.)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long and how many.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From a connection's start, or the end of its last response, to the
    /// end of the next request's headers (also the keep-alive idle timeout).
    pub header_read: Duration,
    /// From the headers to the end of the body.
    pub body_read: Duration,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// After a failed accept (out of file descriptors, say), how long to wait
/// before the next: the error would come back at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// After the drain timeout, how long the cancelled requests' answers have to
/// reach their clients before the connections left are closed.
const ABORT_FLUSH: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for every open connection to finish, or, once `abort`
/// resolves (the drain timeout passed and the handlers answered what was
/// left), [`ABORT_FLUSH`] more before it closes the connections left (a
/// client holding a half-sent request among them).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close before accepting.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .keep_alive(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!("a connection ended with an error: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = async {
            abort.await;
            tokio::time::sleep(ABORT_FLUSH).await;
        } => tracing::info!("closing the connections left after the drain timeout"),
    }
}
