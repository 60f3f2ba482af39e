//! A real Redis Cluster on loopback for the cluster manager's tests: three
//! masters and three replicas, or six for the durable failover test
//! (`redis-server --cluster-enabled yes`, formed by
//! `redis-cli --cluster create --cluster-replicas N`), with a short
//! `cluster-node-timeout` (1000 ms) so a killed master is failed over in
//! about two seconds. Killed on drop.
//!
//! The whole cluster suite runs against one of these when `REDIS_URL` is
//! a `redis+cluster://` URL (`.ci/redis-cluster` starts one for `.ci/run`);
//! the tests that kill a master or move a slot start their own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sentinel::{cli, free_port, streams_to_replicas, wait_for};

/// Three masters and three replicas (see the module docs).
#[derive(Debug)]
pub struct RedisClusterGroup {
    nodes: Vec<(Option<Child>, u16)>,
    dir: std::path::PathBuf,
}

/// Whether `redis-server` and `redis-cli` can be run here.
pub fn redis_cluster_available() -> bool {
    ["redis-server", "redis-cli"].iter().all(|binary| {
        Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A Redis Cluster of the test's own (`replicas` per master), or `None` (after printing why) when
/// the binaries are missing outside CI.
///
/// # Panics
///
/// Under `CI` when the binaries are missing; when the cluster does not
/// form within 30 s.
pub fn own_cluster_for(name: &str, replicas: usize) -> Option<RedisClusterGroup> {
    if redis_cluster_available() {
        return Some(RedisClusterGroup::with_replicas(replicas));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name}: CI is set but there is no redis-server/redis-cli binary (.ci/ensure-redis installs them)"
    );
    eprintln!("SKIPPED {name}: no redis-server/redis-cli binary (apt-get install redis-server)");
    None
}

/// `connected_slaves:N` of a master's `INFO replication`.
fn connected_replicas(replication: &str) -> usize {
    replication
        .lines()
        .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A Redis Cluster node also listens on its port + 10,000 (the cluster bus).
const BUS_OFFSET: u16 = 10_000;

/// A free port whose bus port is free too. The kernel's ephemeral ports go
/// up to 60,999 here, and a node on a port above 55,535 refuses to start
/// (its bus port would not exist): about one port in five.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        let bus_free = port
            .checked_add(BUS_OFFSET)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_free {
            return port;
        }
    }
}

impl RedisClusterGroup {
    /// Starts six servers, forms the cluster and waits until every node
    /// says `cluster_state:ok` and every replica is in sync.
    ///
    /// # Panics
    ///
    /// When a process does not start or the cluster does not form in 30 s.
    pub fn start() -> RedisClusterGroup {
        RedisClusterGroup::with_replicas(1)
    }

    /// Three masters with `replicas` replicas each (two: one is left to
    /// acknowledge writes after the other was promoted, as in the Sentinel
    /// group).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn with_replicas(replicas: usize) -> RedisClusterGroup {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 * (1 + replicas) {
            let port = free_cluster_port();
            // Neither port may be another node's client or bus port.
            if !ports
                .iter()
                .any(|&p| [p, p + BUS_OFFSET].contains(&port) || p == port + BUS_OFFSET)
            {
                ports.push(port);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("wsm-cluster-{}-{}", std::process::id(), ports[0]));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let nodes: Vec<(Option<Child>, u16)> = ports
            .iter()
            .map(|&port| {
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", "1000"])
                    .args(["--save", "", "--appendonly", "no"])
                    // A replica's first sync starts at once, not 5 s later
                    // (the default waits for more replicas to share it).
                    .args(["--repl-diskless-sync-delay", "0"])
                    .args(["--dbfilename", &format!("dump-{port}.rdb")])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server starts");
                (Some(child), port)
            })
            .collect();
        let group = RedisClusterGroup { nodes, dir };
        // Generous: the cluster tests start their groups at the same time,
        // next to a compiling workspace in CI.
        for (_, port) in &group.nodes {
            wait_for(Duration::from_secs(30), "every node answers PING", || {
                cli(*port, &["PING"]) == "PONG"
            });
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        group.wait_until_healthy(Duration::from_secs(30));
        group
    }

    /// Waits until every live node says `cluster_state:ok`, sees three
    /// masters serving all 16384 slots, every live replica is in sync and
    /// every master streams its writes to its replicas (a replica is "in
    /// sync" up to a second before that: see `streams_to_replicas`).
    ///
    /// # Panics
    ///
    /// When that is not so within `limit`.
    pub fn wait_until_healthy(&self, limit: Duration) {
        wait_for(limit, "the cluster is healthy", || {
            self.live_ports().all(|port| {
                let info = cli(port, &["CLUSTER", "INFO"]);
                let replication = cli(port, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            })
            // Asked after every replica said it is linked, so each master
            // counts all of its replicas here.
            && self.live_ports().all(|port| {
                let replication = cli(port, &["INFO", "replication"]);
                !replication.contains("role:master")
                    || streams_to_replicas(port, connected_replicas(&replication))
            })
        });
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|(child, _)| child.is_some())
            .map(|(_, port)| *port)
    }

    /// `redis+cluster://127.0.0.1:A,127.0.0.1:B,...` (every node).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The ports of the live masters.
    pub fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .filter(|port| cli(*port, &["INFO", "replication"]).contains("role:master"))
            .collect()
    }

    /// The port of the master that serves `slot`.
    ///
    /// # Panics
    ///
    /// When no live master claims it.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|port| {
                // CLUSTER COUNTKEYSINSLOT answers anywhere; GETKEYSINSLOT
                // too. Ownership: this master's own line in CLUSTER NODES.
                cli(*port, &["CLUSTER", "NODES"])
                    .lines()
                    .find(|line| line.contains("myself"))
                    .is_some_and(|line| owns(line, slot))
            })
            .expect("a master serves the slot")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        cli(port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number")
    }

    /// The first key matching `pattern` on any master (`--scan`).
    pub fn find_key(&self, pattern: &str) -> Option<String> {
        self.masters().into_iter().find_map(|port| {
            cli(port, &["--scan", "--pattern", pattern])
                .lines()
                .next()
                .map(str::to_owned)
        })
    }

    /// How many keys match `pattern` over every master.
    pub fn count_keys(&self, pattern: &str) -> usize {
        self.masters()
            .into_iter()
            .map(|port| {
                cli(port, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum()
    }

    /// Freezes the node on `port` (SIGSTOP): its connections stay open and
    /// nothing answers, like a hung host or a black-holed path; with
    /// replicas, the cluster fails it over after `cluster-node-timeout`.
    /// (A frozen node still dies on drop: SIGKILL reaches it.)
    ///
    /// # Panics
    ///
    /// When `kill` fails.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Thaws a frozen node (SIGCONT).
    ///
    /// # Panics
    ///
    /// As [`pause`](Self::pause).
    pub fn unpause(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        for (child, p) in &self.nodes {
            if *p == port
                && let Some(child) = child
            {
                let status = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status()
                    .expect("kill runs");
                assert!(status.success(), "kill {signal} failed");
            }
        }
    }

    /// Makes the node on `port` tell clients (`CLUSTER SLOTS`, `MOVED`)
    /// that it is at `announced` (a [`FaultProxy`](crate::fault_proxy::FaultProxy)
    /// in front of it: `cluster-announce-port`), and waits until every live
    /// node says so and every replica of that node replicates again.
    ///
    /// A replica follows its master's announced address: it drops its
    /// replication link and makes a new one through the proxy. Until the
    /// master streams on that link, a `WAIT` on it hears from no replica.
    ///
    /// # Panics
    ///
    /// When the setting is refused, the others do not agree or a replica
    /// is not linked again within 10 s.
    pub fn announce(&self, port: u16, announced: u16) {
        for (setting, value) in [
            ("cluster-announce-ip", "127.0.0.1".to_owned()),
            ("cluster-announce-port", announced.to_string()),
        ] {
            let answer = cli(port, &["CONFIG", "SET", setting, &value]);
            assert_eq!(answer, "OK", "CONFIG SET {setting} on {port}: {answer}");
        }
        let id = cli(port, &["CLUSTER", "MYID"]);
        let needle = format!("127.0.0.1:{announced}@");
        wait_for(
            Duration::from_secs(10),
            "every node knows the announced port",
            || {
                self.live_ports().all(|p| {
                    cli(p, &["CLUSTER", "NODES"])
                        .lines()
                        .any(|line| line.starts_with(&id) && line.contains(&needle))
                })
            },
        );
        let replicas: Vec<u16> = self
            .live_ports()
            .filter(|p| {
                cli(*p, &["CLUSTER", "NODES"])
                    .lines()
                    .any(|line| line.contains("myself,slave") && line.contains(&id))
            })
            .collect();
        let linked = format!("master_port:{announced}");
        wait_for(
            Duration::from_secs(10),
            "every replica replicates through the announced port",
            || {
                replicas.iter().all(|replica| {
                    let replication = cli(*replica, &["INFO", "replication"]);
                    let mut lines = replication.lines().map(str::trim_end);
                    lines.clone().any(|line| line == linked)
                        && lines.any(|line| line == "master_link_status:up")
                }) && streams_to_replicas(port, replicas.len())
            },
        );
    }

    /// SIGKILLs the master on `port`: nothing saved, its replica is
    /// promoted after `cluster-node-timeout` (1 s) and an election.
    pub fn kill(&mut self, port: u16) {
        for (child, p) in &mut self.nodes {
            if *p == port
                && let Some(mut child) = child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Moves `slot` from its master to another one, key by key, as
    /// `redis-cli --cluster reshard` does (`CLUSTER SETSLOT IMPORTING` /
    /// `MIGRATING`, `MIGRATE` in batches, `SETSLOT NODE` everywhere),
    /// pausing `step` between batches so traffic meets the slot mid-move.
    ///
    /// # Panics
    ///
    /// When a step is refused.
    pub fn migrate_slot(&self, slot: u16, step: Duration) -> (u16, u16) {
        let source = self.master_of_slot(slot);
        let target = self
            .masters()
            .into_iter()
            .find(|p| *p != source)
            .expect("another master");
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]);
        let (source_id, target_id) = (id(source), id(target));
        let slot_text = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let answer = cli(port, args);
            assert_eq!(answer, "OK", "{args:?} on {port}: {answer}");
        };
        ok(
            target,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &source_id],
        );
        ok(
            source,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &target_id],
        );
        std::thread::sleep(step);
        loop {
            let keys = cli(source, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "2"]);
            let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let target_port = target.to_string();
            for key in keys {
                let args = ["MIGRATE", "127.0.0.1", &target_port, key, "0", "5000"];
                let answer = cli(source, &args);
                if answer.contains("BUSYKEY") {
                    // The key is on both sides. Seen once in CI with a
                    // node's heartbeat (`alive:<node>`, which shares a
                    // bucket's slot in some runs): a presence rewrite is a
                    // MULTI, queued while the key was still here and run
                    // after MIGRATE moved it, so its SET made it here again.
                    // `redis-cli --cluster` stops there as well (BUSYKEY)
                    // unless told `--cluster-replace`; like that, keep one
                    // copy (both are the node's latest few heartbeats).
                    let dropped = cli(source, &["DEL", key]);
                    assert!(
                        dropped == "1" || dropped == "0",
                        "DEL {key} on {source}: {dropped}"
                    );
                } else {
                    assert!(
                        answer == "OK" || answer == "NOKEY",
                        "{args:?} on {source}: {answer}"
                    );
                }
            }
            std::thread::sleep(step);
        }
        for port in [target, source] {
            ok(
                port,
                &["CLUSTER", "SETSLOT", &slot_text, "NODE", &target_id],
            );
        }
        for port in self.masters() {
            if port != source && port != target {
                let _ = cli(
                    port,
                    &["CLUSTER", "SETSLOT", &slot_text, "NODE", &target_id],
                );
            }
        }
        (source, target)
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        let mut bounds = range.split('-').map(|n| n.parse::<u16>());
        match (bounds.next(), bounds.next()) {
            (Some(Ok(start)), Some(Ok(end))) => (start..=end).contains(&slot),
            (Some(Ok(only)), None) => only == slot,
            _ => false,
        }
    })
}

impl Drop for RedisClusterGroup {
    fn drop(&mut self) {
        for (child, _) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
