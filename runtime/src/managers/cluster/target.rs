//! [`RedisTarget`]: where the cluster's Redis is, read from its URL: one
//! server, a primary named by Redis Sentinel, or a Redis Cluster.

/// The Redis a cluster runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// One server: a `redis://`, `rediss://` or `unix://` URL, as redis-rs
    /// reads it.
    Server(String),
    /// The primary that Redis Sentinel names `master`, asked of the
    /// sentinels at `sentinels` (`redis://host:port` each), and asked again
    /// whenever the node (re)joins: a failover is followed by itself.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    /// A Redis Cluster reached through any of `nodes` (`redis://host:port`
    /// each): the others, and which master owns which slot, are learnt
    /// from them and followed through resharding and failovers.
    Cluster { nodes: Vec<String> },
}

/// The scheme of a Sentinel URL.
const SENTINEL: &str = "redis+sentinel://";
/// The scheme of a Redis Cluster URL.
const CLUSTER: &str = "redis+cluster://";

impl RedisTarget {
    /// Reads `url`: `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME`
    /// for Sentinel, `redis+cluster://HOST:PORT[,HOST:PORT...]` for a Redis
    /// Cluster, anything else is one server's URL.
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        if url.is_empty() {
            return Err("must not be empty");
        }
        if let Some(rest) = url.strip_prefix(CLUSTER) {
            let hosts = rest.strip_suffix('/').unwrap_or(rest);
            if hosts.contains(['/', '?', '#']) {
                return Err(
                    "a Redis Cluster URL names its nodes only: `redis+cluster://HOST:PORT[,HOST:PORT...]` (no database, no path)",
                );
            }
            let nodes = hosts
                .split(',')
                .map(|host| {
                    host_port(host)
                        .ok_or("each node of a Redis Cluster URL is HOST:PORT, with a port number")
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RedisTarget::Cluster { nodes });
        }
        let Some(rest) = url.strip_prefix(SENTINEL) else {
            return Ok(RedisTarget::Server(url.to_owned()));
        };
        let (hosts, master) = rest.split_once('/').ok_or(
            "a Sentinel URL names its master: `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME`",
        )?;
        if master.is_empty() || master.contains(['/', '?', '#', '@']) {
            return Err(
                "the master name of a Sentinel URL must be one non-empty path segment: `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME`",
            );
        }
        let sentinels = hosts
            .split(',')
            .map(|host| {
                host_port(host).ok_or(
                    "each sentinel of a Sentinel URL is HOST:PORT, with a port number (the sentinels listen on 26379 by default)",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedisTarget::Sentinel {
            sentinels,
            master: master.to_owned(),
        })
    }
}

/// `redis://HOST:PORT` for one `HOST:PORT` of a URL's host list.
fn host_port(host: &str) -> Option<String> {
    let (name, port) = host.rsplit_once(':')?;
    if name.is_empty() || name.contains(['@', '/']) || port.parse::<u16>().is_err() {
        return None;
    }
    Some(format!("redis://{host}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_every_sentinel_and_the_master() {
        assert_eq!(
            RedisTarget::parse("redis+sentinel://10.0.0.1:26379,sentinel-b:26380/main").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".to_owned(),
                    "redis://sentinel-b:26380".to_owned()
                ],
                master: "main".to_owned(),
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://10.0.0.1:7000,redis-b:7001").unwrap(),
            RedisTarget::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000".to_owned(),
                    "redis://redis-b:7001".to_owned()
                ],
            }
        );
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/2").unwrap(),
            RedisTarget::Server("redis://127.0.0.1:6379/2".to_owned())
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("", "empty"),
            ("redis+sentinel://h:1", "names its master"),
            ("redis+sentinel://h:1/", "one non-empty path segment"),
            ("redis+sentinel://h:1/a/b", "one non-empty path segment"),
            ("redis+sentinel://h/main", "HOST:PORT"),
            ("redis+sentinel://h:port/main", "port number"),
            ("redis+sentinel://h:1,,h:2/main", "HOST:PORT"),
            ("redis+cluster://", "HOST:PORT"),
            ("redis+cluster://h", "HOST:PORT"),
            ("redis+cluster://h:1,,h:2", "HOST:PORT"),
            ("redis+cluster://h:1/0", "no database"),
        ] {
            let error = RedisTarget::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }
}
