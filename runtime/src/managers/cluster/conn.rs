//! [`Conn`]: the backplane's connection to Redis, whichever kind of Redis
//! it is, so the backplane does not branch on it everywhere.
//!
//! * One server (or the primary Sentinel names): a redis-rs
//!   `ConnectionManager`, one multiplexed TCP connection carrying commands
//!   and the subscriptions (`SUBSCRIBE`, `PUBLISH`).
//! * A Redis Cluster: a redis-rs `cluster_async::ClusterConnection`, one
//!   multiplexed connection per master, each command routed to the master
//!   of its key's slot (following `MOVED`/`ASK` through a reshard, and a
//!   failover by refreshing the slot map). Its subscriptions are sharded
//!   (`SSUBSCRIBE`, `SPUBLISH`): each channel lives on the master of its
//!   slot, and a message is not copied to the other masters. redis-rs
//!   resubscribes them after a reconnect or a slot map refresh; what was
//!   published meanwhile is lost to this node, so the push handler hears of
//!   every disconnection and every `sunsubscribe` the server sends (a slot
//!   moved away) and the node audits (see [`super`]).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// See the module docs.
#[derive(Clone)]
pub(crate) enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where a command runs when the caller picks: the one server, or one
/// master of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Server,
    Master { host: String, port: u16 },
}

fn parse<T: FromRedisValue>(value: Value) -> RedisResult<T> {
    redis::from_redis_value(value).map_err(Into::into)
}

impl Conn {
    /// Subscribes to `channels`: one `SUBSCRIBE` on one server; on a Redis
    /// Cluster one `SSUBSCRIBE` per channel (each on its slot's master),
    /// all at once.
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Server(connection) => connection.subscribe(channels).await,
            Conn::Cluster(connection) => {
                let mut pending = tokio::task::JoinSet::new();
                for channel in channels {
                    let (mut connection, channel) = (connection.clone(), channel.clone());
                    pending.spawn(async move { connection.ssubscribe(channel).await });
                }
                while let Some(done) = pending.join_next().await {
                    done.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "subscription task",
                            e.to_string(),
                        ))
                    })??;
                }
                Ok(())
            }
        }
    }

    /// Runs `command` on the master that holds `key` (on a Redis Cluster a
    /// keyless command such as `WAIT` must go where the write went).
    pub async fn query_where<T: FromRedisValue>(
        &mut self,
        key: &str,
        command: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Conn::Server(connection) => command.query_async(connection).await,
            Conn::Cluster(connection) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                parse(connection.route_command(command.clone(), routing).await?)
            }
        }
    }

    /// Where a scan of every key must look: the server, or each master.
    pub async fn nodes(&mut self) -> RedisResult<Vec<Node>> {
        let Conn::Cluster(connection) = self else {
            return Ok(vec![Node::Server]);
        };
        // CLUSTER SLOTS: [[start, end, [host, port, id, ...], replica...], ...]
        let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(connection)
            .await?;
        let mut masters = Vec::new();
        for range in ranges {
            let Some(master) = range.into_iter().nth(2) else {
                continue;
            };
            // [host, port, id, {hostname...}]: the first two are enough.
            let fields: Vec<Value> = parse(master)?;
            let (Some(host), Some(port)) = (fields.first(), fields.get(1)) else {
                continue;
            };
            let node = Node::Master {
                host: parse(host.clone())?,
                port: parse(port.clone())?,
            };
            if !masters.contains(&node) {
                masters.push(node);
            }
        }
        Ok(masters)
    }

    /// On a Redis Cluster, which master serves each slot range, as the
    /// first master to answer `CLUSTER SLOTS` says: `(first, last,
    /// "host:port")`. Asked of every master at once, so one that does not
    /// answer (frozen, black-holed) delays nothing. One server: none.
    pub async fn slot_masters(&mut self) -> RedisResult<Vec<(u16, u16, String)>> {
        let Conn::Cluster(connection) = self else {
            return Ok(Vec::new());
        };
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::OneSucceeded),
        ));
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let ranges: Vec<Vec<Value>> = parse(connection.route_command(slots, routing).await?)?;
        let mut masters = Vec::with_capacity(ranges.len());
        for range in ranges {
            let mut fields = range.into_iter();
            let (Some(first), Some(last), Some(master)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            // [host, port, id, {hostname...}]: the first two are enough.
            let master: Vec<Value> = parse(master)?;
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
                continue;
            };
            let (host, port): (String, u16) = (parse(host.clone())?, parse(port.clone())?);
            masters.push((parse(first)?, parse(last)?, format!("{host}:{port}")));
        }
        Ok(masters)
    }

    /// `PING` on the master the connection itself routes `slot` to (its own
    /// slot map, stale or not: the connection that carries the slot's
    /// commands and subscriptions). One server: a plain `PING`.
    pub async fn ping_slot(&mut self, slot: u16) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Conn::Server(connection) => ping.query_async::<Value>(connection).await.map(drop),
            Conn::Cluster(connection) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot, SlotAddr::Master),
                ));
                connection.route_command(ping, routing).await.map(drop)
            }
        }
    }

    /// Runs `command` on `node`.
    pub async fn query_on<T: FromRedisValue>(
        &mut self,
        node: &Node,
        command: &Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Conn::Cluster(connection), Node::Master { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                parse(connection.route_command(command.clone(), routing).await?)
            }
            (connection, _) => command.query_async(connection).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(connection) => connection.req_packed_command(cmd),
            Conn::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(connection) => connection.req_packed_commands(cmd, offset, count),
            Conn::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(connection) => connection.get_db(),
            Conn::Cluster(connection) => connection.get_db(),
        }
    }
}
