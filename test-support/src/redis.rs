//! A real `redis-server` for the cluster tests.
//!
//! With `REDIS_URL` set (what `.ci/run` does: one server for the whole run,
//! each test in its own key prefix) the tests use it. Without it, each test
//! starts its own `redis-server` on a free loopback port (persistence off)
//! and kills it when done. When neither is possible the test says clearly
//! that it was skipped, and under `CI` it fails instead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process owned by a test; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Where a persistent server keeps its snapshot (`None`: nothing kept).
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits for its PING.
    ///
    /// # Panics
    ///
    /// When the binary cannot be started or does not answer within 5 s.
    pub fn start() -> RedisServer {
        let mut server = RedisServer::not_started();
        server.restart();
        server
    }

    /// A server on a free loopback port that is not started yet (nothing
    /// listens there until [`restart`](Self::restart)): Redis unreachable
    /// when a node starts.
    ///
    /// # Panics
    ///
    /// When no free port can be found.
    pub fn not_started() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        RedisServer {
            port,
            child: None,
            dir: None,
        }
    }

    /// A server that loads its last snapshot when restarted: it saves only
    /// when told ([`save`](Self::save)), so a restart after a SIGKILL comes
    /// back with an older state than it had (what a restart from an old
    /// snapshot or a failover to a lagging replica does).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_persistent() -> RedisServer {
        let mut server = RedisServer::not_started();
        let dir =
            std::env::temp_dir().join(format!("wsm-redis-{}-{}", std::process::id(), server.port));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        server.dir = Some(dir);
        server.restart();
        server
    }

    /// Writes a snapshot now (`SAVE`).
    ///
    /// # Panics
    ///
    /// When the server does not answer `+OK`.
    pub fn save(&self) {
        let mut stream = send_command(&self.url(), &["SAVE"]);
        assert_eq!(read_line(&mut stream), "+OK", "SAVE");
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL): no shutdown, nothing saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server must be thawed to die.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing
    /// answers, like a hung host or a half-open network path.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Starts it again on the same port: empty, or with its last snapshot
    /// when persistent.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(self.dir.iter().flat_map(|dir| {
                [
                    std::ffi::OsString::from("--dir"),
                    dir.clone().into_os_string(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 5 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// Whether `redis-server` can be run here.
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Redis a test uses: the run's shared one, or one of its own.
#[derive(Debug)]
pub enum TestRedis {
    /// `REDIS_URL`, shared: keep to your own key prefix.
    Shared(String),
    /// Started for this test.
    Own(RedisServer),
}

impl TestRedis {
    /// Its URL.
    pub fn url(&self) -> String {
        match self {
            TestRedis::Shared(url) => url.clone(),
            TestRedis::Own(server) => server.url(),
        }
    }
}

/// A Redis for the test `name`, or `None` (after printing why) when none
/// can be had outside CI.
///
/// # Panics
///
/// Under `CI` when no Redis can be had.
pub fn redis_for(name: &str) -> Option<TestRedis> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some(TestRedis::Shared(url));
    }
    if redis_server_available() {
        return Some(TestRedis::Own(RedisServer::start()));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name}: CI is set but there is no REDIS_URL and no redis-server binary (.ci/ensure-redis installs it)"
    );
    eprintln!(
        "SKIPPED {name}: no REDIS_URL and no redis-server binary (apt-get install redis-server, or set REDIS_URL)"
    );
    None
}

/// A server of the test's own, for tests that kill and restart Redis (never
/// the shared one).
pub fn own_redis_for(name: &str) -> Option<RedisServer> {
    if redis_server_available() {
        return Some(RedisServer::start());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name}: CI is set but there is no redis-server binary (.ci/ensure-redis installs it)"
    );
    eprintln!("SKIPPED {name}: no redis-server binary (apt-get install redis-server)");
    None
}

/// A key prefix no other test or run uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("test:{name}:{}:{nanos}", std::process::id())
}

/// Sends one command to the server at `url` over a plain RESP exchange
/// (tests only) and returns the stream, positioned at the reply.
///
/// # Panics
///
/// When the URL is not `redis://host:port[/...]` or the server does not
/// answer.
fn send_command(url: &str, parts: &[&str]) -> TcpStream {
    let address = url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split('/').next())
        .expect("a redis://host:port URL");
    let mut stream = TcpStream::connect(address).expect("redis answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut command = format!("*{}\r\n", parts.len());
    for part in parts {
        command.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    stream.write_all(command.as_bytes()).expect("command sent");
    stream
}

/// Reads one `\r\n`-terminated line.
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("a reply");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim_end().to_owned()
}

/// How many keys match `pattern` on the server at `url` (`KEYS`: tests
/// only, on small test servers); for a `redis+cluster://` URL, on every
/// master it lists.
///
/// # Panics
///
/// As `send_command` (private), or when the reply is not an array.
pub fn count_keys(url: &str, pattern: &str) -> usize {
    if let Some(hosts) = url.strip_prefix("redis+cluster://") {
        return hosts
            .split(',')
            .map(|host| format!("redis://{host}"))
            .filter(|node| info(node, "replication").contains("role:master"))
            .map(|node| count_keys(&node, pattern))
            .sum();
    }
    let mut stream = send_command(url, &["KEYS", pattern]);
    // The reply starts `*N\r\n`: N is all we need.
    read_line(&mut stream)
        .trim_start_matches('*')
        .parse()
        .expect("an array reply")
}

/// Empties the server at `url` (`FLUSHALL`: benches that run twice).
///
/// # Panics
///
/// As `send_command` (private), or when the server does not say `OK`.
pub fn flush_all(url: &str) {
    let mut stream = send_command(url, &["FLUSHALL"]);
    assert_eq!(read_line(&mut stream), "+OK", "FLUSHALL");
}

/// The text of `INFO section` from the server at `url`.
///
/// # Panics
///
/// As `send_command` (private), or when the reply is not a bulk string.
pub fn info(url: &str, section: &str) -> String {
    let mut stream = send_command(url, &["INFO", section]);
    let head = read_line(&mut stream);
    let length = head.strip_prefix('$').expect("a bulk reply");
    let mut body = vec![0u8; length.parse().expect("a bulk length")];
    stream.read_exact(&mut body).expect("the INFO text");
    String::from_utf8_lossy(&body).into_owned()
}

/// How many client connections the server at `url` holds, this one
/// included (`INFO clients`).
///
/// # Panics
///
/// As `send_command` (private), or when the reply has no `connected_clients`.
pub fn connected_clients(url: &str) -> usize {
    info(url, "clients")
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients in INFO")
}

/// A raw subscriber on one server (tests only): subscribes with `command`
/// (`SUBSCRIBE`, or `SSUBSCRIBE` on the master of a Redis Cluster slot)
/// over a plain RESP2 connection of its own, and keeps every byte it
/// receives, so a test can count what was published: each message carries
/// its payload once. Stops on drop.
#[derive(Debug)]
pub struct Eavesdropper {
    stream: TcpStream,
    heard: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Eavesdropper {
    /// Subscribes to `channel` on the server at `address` (`host:port`) and
    /// returns once the server confirmed it.
    ///
    /// # Panics
    ///
    /// When the server does not answer or refuses.
    pub fn start(address: &str, command: &str, channel: &str) -> Eavesdropper {
        let mut stream = TcpStream::connect(address).expect("redis answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let request = format!(
            "*2\r\n${}\r\n{command}\r\n${}\r\n{channel}\r\n",
            command.len(),
            channel.len()
        );
        stream.write_all(request.as_bytes()).expect("command sent");
        // The confirmation: `*3`, the command's name in lower case, the
        // channel, the count.
        let confirmation = [
            read_line(&mut stream),
            read_line(&mut stream),
            read_line(&mut stream),
            read_line(&mut stream),
            read_line(&mut stream),
            read_line(&mut stream),
        ];
        assert!(
            confirmation[2].eq_ignore_ascii_case(command),
            "{command} {channel}: {confirmation:?}"
        );
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut source, sink) = (
            stream.try_clone().expect("a second handle"),
            std::sync::Arc::clone(&heard),
        );
        let _ = source.set_read_timeout(None);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = source.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&buffer[..read]);
            }
        });
        Eavesdropper {
            stream,
            heard,
            reader: Some(reader),
        }
    }

    /// How many times `pattern` occurs in what was received so far.
    pub fn count(&self, pattern: &str) -> usize {
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pattern = pattern.as_bytes();
        if pattern.is_empty() {
            return 0;
        }
        heard
            .windows(pattern.len())
            .filter(|w| *w == pattern)
            .count()
    }
}

impl Drop for Eavesdropper {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
