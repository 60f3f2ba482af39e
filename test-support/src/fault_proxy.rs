//! A TCP proxy that fails the way production links fail: it black-holes
//! the connections that exist at that moment (keeps both sockets open and
//! swallows their bytes, in one direction or both, like an expired NAT
//! entry or a firewall that dropped its state), while new connections pass;
//! or it cuts (closes) them all; or it cuts one connection right after a
//! given request reached the server, before its answer reaches the client
//! (the client cannot know whether the request ran: what a connection that
//! drops mid-command looks like to it).
//!
//! ```no_run
//! # async fn run() {
//! use websocket_manager_test_support::fault_proxy::{Direction, FaultProxy};
//! let proxy = FaultProxy::start("127.0.0.1:6379").await;
//! let url = proxy.url("redis"); // redis://127.0.0.1:PORT
//! // ... connect through `url` ...
//! proxy.black_hole(Direction::Both); // existing connections go silent
//! assert_eq!(proxy.accepted(), 1);
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which bytes of a connection the proxy swallows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// What the client sends never reaches the server.
    ClientToServer,
    /// What the server sends never reaches the client.
    ServerToClient,
    /// Nothing passes either way.
    Both,
}

/// One proxied connection: what it swallows, and its two pumps.
#[derive(Debug)]
struct Link {
    drop_to_server: AtomicBool,
    drop_to_client: AtomicBool,
    /// Set when a request that triggered [`FaultProxy::cut_after`] passed:
    /// the client's side is closed.
    cut: tokio::sync::Notify,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// What [`FaultProxy::cut_after`] looks for in the requests.
#[derive(Debug, Default)]
struct Trigger {
    pattern: Mutex<Option<Vec<u8>>>,
    /// The next request containing the pattern cuts its connection.
    armed: AtomicBool,
    /// Requests containing the pattern that reached the server.
    seen: AtomicUsize,
}

impl Trigger {
    /// Whether `chunk` holds the pattern (counted), and whether it is the
    /// one that cuts (disarms).
    fn check(&self, chunk: &[u8]) -> (bool, bool) {
        let pattern = self
            .pattern
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(pattern) = pattern.as_deref() else {
            return (false, false);
        };
        if pattern.is_empty() || !chunk.windows(pattern.len()).any(|w| w == pattern) {
            return (false, false);
        }
        self.seen.fetch_add(1, Ordering::SeqCst);
        (true, self.armed.swap(false, Ordering::SeqCst))
    }
}

/// The proxy; stops (and closes everything) on drop.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    accepted: Arc<AtomicUsize>,
    trigger: Arc<Trigger>,
    listener: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream` (`host:port`).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let address = listener.local_addr().expect("a bound address");
        let links: Arc<Mutex<Vec<Arc<Link>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let trigger = Arc::new(Trigger::default());
        let upstream = upstream.to_owned();
        let (registry, count) = (Arc::clone(&links), Arc::clone(&accepted));
        let cuts = Arc::clone(&trigger);
        let listener = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    // Upstream down: the client sees its connection closed.
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let link = Arc::new(Link {
                    drop_to_server: AtomicBool::new(false),
                    drop_to_client: AtomicBool::new(false),
                    cut: tokio::sync::Notify::new(),
                    pumps: Mutex::new(Vec::new()),
                });
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let to_server = tokio::spawn(pump_to_server(
                    client_read,
                    server_write,
                    Arc::clone(&link),
                    Arc::clone(&cuts),
                ));
                let to_client =
                    tokio::spawn(pump_to_client(server_read, client_write, Arc::clone(&link)));
                link.pumps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend([to_server, to_client]);
                registry
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(link);
            }
        });
        FaultProxy {
            address,
            links,
            accepted,
            trigger,
            listener,
        }
    }

    /// Arms a one-shot cut: the next request (bytes from a client) that
    /// contains `pattern` is passed to the server, then its connection is
    /// closed on the client's side before any answer reaches the client
    /// (what the server answers is swallowed; the server's side stays open
    /// a second, so the server runs the request, then closes). The client
    /// sees its connection drop with the request in flight. Requests
    /// containing `pattern` are counted from now on ([`seen`](Self::seen)).
    pub fn cut_after(&self, pattern: &[u8]) {
        *self
            .trigger
            .pattern
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pattern.to_vec());
        self.trigger.seen.store(0, Ordering::SeqCst);
        self.trigger.armed.store(true, Ordering::SeqCst);
    }

    /// How many requests containing the [`cut_after`](Self::cut_after)
    /// pattern reached the server (the one that cut included).
    pub fn seen(&self) -> usize {
        self.trigger.seen.load(Ordering::SeqCst)
    }

    /// `scheme://127.0.0.1:PORT`, the proxy's address.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
    }

    /// The proxy's port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// How many connections the proxy has forwarded so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Swallows, from now on, the bytes going `direction` on every
    /// connection open now. Their sockets stay open; new connections pass.
    /// Returns how many connections were affected.
    pub fn black_hole(&self, direction: Direction) -> usize {
        let links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for link in links.iter() {
            if matches!(direction, Direction::ClientToServer | Direction::Both) {
                link.drop_to_server.store(true, Ordering::SeqCst);
            }
            if matches!(direction, Direction::ServerToClient | Direction::Both) {
                link.drop_to_client.store(true, Ordering::SeqCst);
            }
        }
        links.len()
    }

    /// Closes every connection open now (both sides see it closed); new
    /// connections pass. Returns how many were closed.
    pub fn cut(&self) -> usize {
        let links: Vec<Arc<Link>> = std::mem::take(
            &mut *self
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for link in &links {
            for pump in link
                .pumps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain(..)
            {
                pump.abort();
            }
        }
        links.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}

/// Copies the client's requests to the server until either closes,
/// swallowing them while the link's flag says so; a request that trips the
/// armed [`Trigger`] passes, then the client's side is closed.
async fn pump_to_server(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    trigger: Arc<Trigger>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if link.drop_to_server.load(Ordering::SeqCst) {
            continue;
        }
        let (_, cuts) = trigger.check(&buffer[..read]);
        if cuts {
            // Nothing from the server passes from now on, not even the
            // answer to this request.
            link.drop_to_client.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        if cuts {
            // The client's side closes (this half here, the other in the
            // other pump); the server's stays open a moment, so the server
            // reads and runs the request before it sees the close.
            link.cut.notify_one();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                drop(to);
            });
            return;
        }
    }
    // A swallowed direction never passes on a close either: the peer keeps
    // waiting on a half-open connection, as behind a dead NAT entry.
    if link.drop_to_server.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

/// Copies the server's answers to the client until either closes,
/// swallowing them while the link's flag says so; closes the client's side
/// when a request cut the link (and drains the server's).
async fn pump_to_client(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut to = Some(to);
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = link.cut.notified(), if to.is_some() => {
                // Both client halves are gone once this one is: closed.
                to = None;
                continue;
            }
        };
        let read = match read {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if link.drop_to_client.load(Ordering::SeqCst) {
            continue;
        }
        let Some(writer) = to.as_mut() else {
            continue;
        };
        if writer.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    // A swallowed direction never passes on a close either: the peer keeps
    // waiting on a half-open connection, as behind a dead NAT entry.
    if to.is_some() && link.drop_to_client.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}
