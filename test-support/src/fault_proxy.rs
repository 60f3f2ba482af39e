//! A TCP proxy that fails the way production links fail: it black-holes
//! the connections that exist at that moment (keeps both sockets open and
//! swallows their bytes, in one direction or both, like an expired NAT
//! entry or a firewall that dropped its state), while new connections pass;
//! or it cuts (closes) them all.
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
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// The proxy; stops (and closes everything) on drop.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    accepted: Arc<AtomicUsize>,
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
        let upstream = upstream.to_owned();
        let (registry, count) = (Arc::clone(&links), Arc::clone(&accepted));
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
                    pumps: Mutex::new(Vec::new()),
                });
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let to_server =
                    tokio::spawn(pump(client_read, server_write, Arc::clone(&link), true));
                let to_client =
                    tokio::spawn(pump(server_read, client_write, Arc::clone(&link), false));
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
            listener,
        }
    }

    /// `scheme://127.0.0.1:PORT`, the proxy's address.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
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

/// Copies `from` into `to` until either closes, swallowing the bytes while
/// the link's flag for this direction is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    to_server: bool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let swallow = if to_server {
            link.drop_to_server.load(Ordering::SeqCst)
        } else {
            link.drop_to_client.load(Ordering::SeqCst)
        };
        if swallow {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    // A swallowed direction never passes on a close either: the peer keeps
    // waiting on a half-open connection, as behind a dead NAT entry.
    let swallowing = if to_server {
        link.drop_to_server.load(Ordering::SeqCst)
    } else {
        link.drop_to_client.load(Ordering::SeqCst)
    };
    if swallowing {
        std::future::pending::<()>().await;
    }
}
