//! A real Redis Sentinel group on loopback for the failover tests: one
//! primary, two replicas (so that one is left to acknowledge writes after
//! the other is promoted) and three sentinels (`redis-server --sentinel`,
//! what Debian's `redis-sentinel` runs), with short failure detection
//! (`down-after-milliseconds` 1000, quorum 2). Killed on drop.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::RedisServer;

/// The master name the sentinels monitor.
pub const MASTER: &str = "wsm-test";

/// A primary, two replicas and three sentinels (see the module docs).
#[derive(Debug)]
pub struct SentinelGroup {
    /// The primary at start; `None` once killed.
    primary: Option<RedisServer>,
    replicas: Vec<(Child, u16)>,
    sentinels: Vec<(Child, u16)>,
    dir: std::path::PathBuf,
}

/// A free loopback port (free when asked).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `redis-cli -p PORT ARGS...`'s output, trimmed ("" when it fails).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Whether the master on `port` streams its writes to `replicas` replicas
/// now: a write that replicates and holds nothing of ours (`FUNCTION
/// FLUSH`, keyless, so any master takes it), then `WAIT` on that connection.
///
/// A replica says `master_link_status:up` before its master streams to it:
/// after a diskless full sync the master starts the stream on the replica's
/// `REPLCONF ACK`, and when the replica's first ACK arrives before the
/// master saw the transfer end, on the next one, up to a second later (seen
/// in both Redis logs). A `WAIT` in that second hears from no replica.
pub(crate) fn streams_to_replicas(port: u16, replicas: usize) -> bool {
    let Ok(mut child) = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let commands = format!("FUNCTION FLUSH\nWAIT {replicas} 100\n");
    let written = child
        .stdin
        .take()
        .is_some_and(|mut stdin| stdin.write_all(commands.as_bytes()).is_ok());
    let Ok(output) = child.wait_with_output() else {
        return false;
    };
    let acknowledged = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .and_then(|line| line.trim().parse::<usize>().ok());
    written && acknowledged == Some(replicas)
}

/// Polls `done` every 50 ms, panicking with `what` after `limit`.
pub(crate) fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SentinelGroup {
    /// Starts the group and waits until the replica is in sync and every
    /// sentinel sees the primary and its replica.
    ///
    /// # Panics
    ///
    /// When a process does not start or the group does not form within 20 s.
    pub fn start() -> SentinelGroup {
        let primary = RedisServer::start();
        let primary_port = port_of(&primary.address());
        let dir = std::env::temp_dir().join(format!(
            "wsm-sentinel-{}-{primary_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let replicas = (0..2)
            .map(|_| {
                let port = free_port();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    // A replica writes the copy it receives to disk: there.
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--dbfilename", &format!("replica-{port}.rdb")])
                    .args(["--replicaof", "127.0.0.1", &primary_port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("a replica starts");
                (child, port)
            })
            .collect::<Vec<_>>();
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\n\
                         sentinel failover-timeout {MASTER} 5000\n\
                         sentinel parallel-syncs {MASTER} 1\n",
                        dir.display()
                    ),
                )
                .expect("sentinel config written");
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("a sentinel starts");
                (child, port)
            })
            .collect::<Vec<_>>();
        let group = SentinelGroup {
            primary: Some(primary),
            replicas,
            sentinels,
            dir,
        };
        for (_, replica) in &group.replicas {
            wait_for(Duration::from_secs(20), "the replicas are in sync", || {
                cli(*replica, &["INFO", "replication"]).contains("master_link_status:up")
            });
            for (_, sentinel) in &group.sentinels {
                wait_for(
                    Duration::from_secs(20),
                    "every sentinel sees every replica",
                    || {
                        cli(*sentinel, &["SENTINEL", "replicas", MASTER])
                            .contains(&replica.to_string())
                    },
                );
            }
        }
        wait_for(
            Duration::from_secs(20),
            "the primary streams its writes to both replicas",
            || streams_to_replicas(primary_port, group.replicas.len()),
        );
        group
    }

    /// `redis+sentinel://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C/wsm-test`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// SIGKILLs the primary: no shutdown, nothing saved; the sentinels
    /// promote the replica after about a second.
    pub fn kill_primary(&mut self) {
        if let Some(mut primary) = self.primary.take() {
            primary.kill();
        }
    }

    /// Waits until a replica has been promoted (answers `role:master`).
    ///
    /// # Panics
    ///
    /// When none is within `limit`.
    pub fn wait_for_promotion(&self, limit: Duration) {
        wait_for(limit, "a replica is promoted", || {
            self.replicas
                .iter()
                .any(|(_, port)| cli(*port, &["INFO", "replication"]).contains("role:master"))
        });
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("HOST:PORT")
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (child, _) in &mut self.replicas {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
