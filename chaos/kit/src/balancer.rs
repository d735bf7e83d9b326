//! The fleet's load balancer: round robin over gateway nodes at the TCP level, skipping a node
//! that refuses the connection (as a health-checking balancer would within one check interval).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a connection attempt to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A running balancer. Stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Balancer {
    /// Balances a free loopback port over `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let stop = CancellationToken::new();
        let (backends, next) = (Arc::new(backends), Arc::new(AtomicUsize::new(0)));
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    () = accept_stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let (backends, next, stop) = (
                    Arc::clone(&backends),
                    Arc::clone(&next),
                    accept_stop.clone(),
                );
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    for _ in 0..backends.len() {
                        let b = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                        let Ok(Ok(mut outbound)) =
                            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(b)).await
                        else {
                            continue;
                        };
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = stop.cancelled() => {}
                        }
                        return;
                    }
                });
            }
        });
        Self { addr, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
