//! The gateway's pooled connections to workloads: one pool per listener, keyed by the
//! sandbox, the port it asked for and the listener socket's cookie.
//!
//! A pool keyed by the loopback address alone would outlive the listener: once a sandbox's
//! listener closed and another sandbox's steered listener landed on the same port, requests
//! for the second could be sent over the first's still-open connection. Here a new listener
//! gets a new pool, and a pool goes (its idle connections closed) as soon as its listener or
//! its sandbox does.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::{ClientBody, upstream::MarkedConnector};

/// Idle pooled connections close after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer of connections to HTTP/1.1 workloads.
const UPSTREAM_READ_BUF: usize = 256 * 1024;

/// Which listener a pool's connections go to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub sandbox: String,
    /// The port as the workload asked for it.
    pub port: u16,
    /// The listener socket's cookie (unique for the host's uptime).
    pub listener: u64,
}

/// One listener's clients, HTTP/1.1 and HTTP/2 (prior knowledge).
#[derive(Clone)]
pub struct Clients {
    pub http1: Client<MarkedConnector, ClientBody>,
    pub http2: Client<MarkedConnector, ClientBody>,
}

impl Clients {
    fn new() -> Self {
        // Reads from workloads in large chunks: bulk bodies cost fewer syscalls and frames
        // (measured in BENCHMARKS.md, "Ingress").
        Self {
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .http1_read_buf_exact_size(UPSTREAM_READ_BUF)
                .build(MarkedConnector),
            http2: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .http2_only(true)
                .build(MarkedConnector),
        }
    }
}

#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Clients>>,
}

impl Pools {
    /// The clients of this listener. Pools of an earlier listener of the same sandbox and
    /// port go now: that listener is closed.
    pub fn get(&self, key: &PoolKey) -> Clients {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = pools.get(key) {
            return c.clone();
        }
        pools.retain(|k, _| !(k.sandbox == key.sandbox && k.port == key.port));
        let clients = Clients::new();
        pools.insert(key.clone(), clients.clone());
        clients
    }

    /// Drops the pools whose listener is gone (`live` says which are not). Connections in
    /// use finish their request; idle ones close.
    pub fn retain(&self, live: impl Fn(&PoolKey) -> bool) {
        let keys: Vec<PoolKey> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        // The checks (map lookups) run without the lock.
        let gone: Vec<PoolKey> = keys.into_iter().filter(|k| !live(k)).collect();
        if gone.is_empty() {
            return;
        }
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &gone {
            pools.remove(k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pools.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sandbox: &str, port: u16, listener: u64) -> PoolKey {
        PoolKey {
            sandbox: sandbox.into(),
            port,
            listener,
        }
    }

    #[tokio::test]
    async fn each_listener_has_its_own_pool_and_a_new_listener_replaces_the_old() {
        let pools = Pools::default();
        pools.get(&key("a", 8080, 1));
        pools.get(&key("a", 8080, 1));
        // Another sandbox on the same port, whatever the loopback address: its own pool.
        pools.get(&key("b", 8080, 2));
        pools.get(&key("a", 9090, 3));
        assert_eq!(pools.len(), 3);
        // A's listener on 8080 was replaced: its old pool goes.
        pools.get(&key("a", 8080, 4));
        assert_eq!(pools.len(), 3);
        pools.retain(|k| k.sandbox != "a");
        assert_eq!(pools.len(), 1);
    }
}
