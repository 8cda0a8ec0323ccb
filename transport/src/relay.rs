//! A fault-injecting UDP relay for tests: sits between QUIC peers on loopback and drops, delays,
//! duplicates or reorders datagrams, or blackholes everything to partition the peers and heal them later.
//!
//! Faults are drawn from one RNG seeded by the caller, so a failing run can be replayed with its seed
//! (timing still varies with the scheduler). It binds to 127.0.0.1 only. Each client address gets its own
//! upstream socket, so several nodes can share one relay in front of a hub.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram relayed; QUIC datagrams are far smaller.
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Most distinct clients one relay serves.
const CLIENTS_MAX: usize = 64;

/// Fault rates of a relay. Percentages are 0..=100 per datagram.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Datagrams dropped.
    pub drop_pct: u8,
    /// Datagrams sent twice.
    pub duplicate_pct: u8,
    /// Datagrams held back by a random extra delay so later ones overtake them.
    pub reorder_pct: u8,
    /// Delay added to every datagram, in milliseconds.
    pub delay_ms: u64,
}

/// Counters of what the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams forwarded (duplicates count twice).
    pub forwarded: AtomicU64,
    /// Datagrams dropped by faults or the blackhole.
    pub dropped: AtomicU64,
}

struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    blackhole: AtomicBool,
    stats: RelayStats,
}

/// A running relay. Dropping it stops it.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish()
    }
}

impl Relay {
    /// Starts a relay on 127.0.0.1 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            blackhole: AtomicBool::new(false),
            stats: RelayStats::default(),
        });
        let task = tokio::spawn(run_front(front, upstream, shared.clone()));
        Ok(Relay { addr, shared, task })
    }

    /// Where clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram while on (a partition); off heals it.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Changes the fault rates.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.shared.faults.lock() {
            *f = faults;
        }
    }

    /// What the relay did so far.
    pub fn stats(&self) -> &RelayStats {
        &self.shared.stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_front(front: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut backs: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let (n, client) = match front.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) if is_transient(&e) => continue,
            Err(_) => break,
        };
        if !backs.contains_key(&client) {
            if backs.len() >= CLIENTS_MAX {
                continue;
            }
            let Ok(back) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await else { continue };
            if back.connect(upstream).await.is_err() {
                continue;
            }
            let back = Arc::new(back);
            let task = tokio::spawn(run_back(back.clone(), front.clone(), client, shared.clone()));
            backs.insert(client, (back, task));
        }
        if let Some((back, _)) = backs.get(&client) {
            let back = back.clone();
            forward(&shared, buf[..n].to_vec(), move |d| {
                let back = back.clone();
                async move {
                    let _ = back.send(&d).await;
                }
            });
        }
    }
    for (_, (_, task)) in backs {
        task.abort();
    }
}

async fn run_back(back: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let n = match back.recv(&mut buf).await {
            Ok(n) => n,
            // A datagram sent before the upstream listened came back as ICMP "port unreachable", which a
            // connected UDP socket reports on its next receive. The peer may listen by the next datagram:
            // keep relaying (ending here left the client deaf to every later answer). Each such error
            // answers one datagram we sent, so this cannot spin on its own.
            Err(e) if is_transient(&e) => continue,
            Err(_) => return,
        };
        let front = front.clone();
        forward(&shared, buf[..n].to_vec(), move |d| {
            let front = front.clone();
            async move {
                let _ = front.send_to(&d, client).await;
            }
        });
    }
}

/// An error a UDP socket reports for an earlier datagram (ICMP), not a broken socket.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset)
}

/// Applies the faults to one datagram and sends the surviving copies via `send`.
fn forward<F, Fut>(shared: &Arc<Shared>, datagram: Vec<u8>, send: F)
where
    F: Fn(Vec<u8>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    if shared.blackhole.load(Ordering::SeqCst) {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let faults = shared.faults.lock().map(|f| f.clone()).unwrap_or_default();
    let (dropped, copies, delay_ms) = match shared.rng.lock() {
        Ok(mut rng) => {
            let dropped = rng.random_range(0..100u8) < faults.drop_pct;
            let copies = if rng.random_range(0..100u8) < faults.duplicate_pct { 2 } else { 1 };
            let extra = if rng.random_range(0..100u8) < faults.reorder_pct {
                rng.random_range(1..=faults.delay_ms.max(5) * 2)
            } else {
                0
            };
            (dropped, copies, faults.delay_ms + extra)
        }
        Err(_) => (false, 1, faults.delay_ms),
    };
    if dropped {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.stats.forwarded.fetch_add(copies, Ordering::Relaxed);
    tokio::spawn(async move {
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        for _ in 0..copies {
            send(datagram.clone()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that starts before its hub sends into a closed port first; the relay must still carry the
    /// hub's answers once the hub listens. (It used to stop reading from the hub at the first ICMP error,
    /// so that node never completed a handshake: a CI failure of the lossy-link test.)
    #[tokio::test]
    async fn answers_flow_once_the_upstream_listens_after_a_refused_datagram() {
        let step = Duration::from_secs(2);
        // A loopback port nobody listens on (yet).
        let upstream = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let relay = Relay::start(upstream, Faults::default(), 1).await.unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        client.send_to(b"early", relay.local_addr()).await.unwrap();
        // Let the ICMP "port unreachable" come back to the relay's upstream socket.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let server = UdpSocket::bind(upstream).await.unwrap();
        client.send_to(b"ping", relay.local_addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(step, server.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).await.unwrap();
        let n = tokio::time::timeout(step, client.recv(&mut buf))
            .await
            .expect("the relay stopped carrying the upstream's answers")
            .unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(relay.stats().dropped.load(Ordering::Relaxed), 0);
    }
}
