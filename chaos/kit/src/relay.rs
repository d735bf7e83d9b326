//! A TCP relay that can be cut: the network partition of a harness that may not create network
//! namespaces. Cutting drops every open connection and refuses new ones until healed.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay to one address. Stops when dropped.
pub struct Relay {
    /// `127.0.0.1:PORT`, where to connect instead of the target.
    pub addr: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Relays a free loopback port to `to`.
    pub async fn start(to: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address").to_string();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (to, mut cut_rx) = (to.clone(), cut_rx.clone());
                if *cut_rx.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&to).await else {
                        return;
                    };
                    // As the peers themselves do: a relay that waited for delayed ACKs would add
                    // tens of milliseconds to every Raft round trip.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn set_cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}
