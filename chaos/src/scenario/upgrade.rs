//! Upgrades under load: gateways replaced one at a time by containers of a new image tag, and a
//! cache node replaced on an empty disk under a new id, as the runbook for a lost disk says.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::fleet::StoreKind;

/// Probe entries written before a cache node is replaced, read back after.
const PROBES: u32 = 50;
/// The first probe entry of this scenario (others use lower numbers).
const FIRST_PROBE: u32 = 1_000_000;

/// Each gateway in turn: drained (SIGTERM; it leaves the balancer's rotation as its `/readyz`
/// turns 503), replaced by a container of the new tag, ready and back in the rotation before
/// the next goes. Then, on the Raft store, a follower loses its disk: a new node with a new id
/// joins at its address and `cachectl members replace` promotes it; nothing written before is
/// lost and every node converges.
pub(super) async fn rolling_upgrade(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.1)).await;
    let next = c.fleet.next_image()?;
    for i in 0..c.fleet.gateways.len() {
        c.timeline.record(
            "fault",
            format!("gateway-{} drained and replaced by {next}", i + 1),
        );
        let gateway = &c.fleet.gateways[i];
        tokio::task::block_in_place(|| {
            let mut g = gateway.lock().unwrap_or_else(|p| p.into_inner());
            g.terminate(Duration::from_secs(15));
            g.container()
                .ok_or_else(|| anyhow::anyhow!("a rolling upgrade replaces containers"))?
                .replace(&next)
        })?;
        c.fleet.wait_ready(i).await?;
        c.fleet.wait_balanced().await?;
        c.timeline
            .record("heal", format!("gateway-{} on {next}, in rotation", i + 1));
    }
    if c.fleet.spec.store != StoreKind::Raft {
        return Ok(());
    }

    let mut written = Vec::new();
    for n in FIRST_PROBE..FIRST_PROBE + PROBES {
        if c.fleet.write_probe(n).await {
            written.push(n);
        }
    }
    let leader = c.raft_leader().await?;
    let victim = (leader + 1) % c.fleet.cache_nodes.len();
    let statuses = c.fleet.cache_statuses().await;
    let old_id = statuses
        .iter()
        .find(|(i, _)| *i == victim)
        .map(|(_, s)| s.id)
        .ok_or_else(|| anyhow::anyhow!("cache-node-{} does not answer", victim + 1))?;
    let new_id = old_id + 10;
    tokio::task::block_in_place(|| c.fleet.replace_cache_node(victim, new_id))?;
    c.timeline.record(
        "fault",
        format!(
            "cache-node-{} lost its disk: node {new_id} joins at its address",
            victim + 1
        ),
    );
    c.fleet.wait_cache_node(victim).await?;
    // The new node asks to be added as a learner when it starts; the replacement needs it to
    // be one.
    let joining = Instant::now();
    loop {
        let statuses = c.fleet.cache_statuses().await;
        if statuses
            .iter()
            .any(|(_, s)| s.members.iter().any(|m| m.id == new_id))
        {
            break;
        }
        anyhow::ensure!(
            joining.elapsed() < Duration::from_secs(30),
            "node {new_id} did not join as a learner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (old, new) = (old_id.to_string(), new_id.to_string());
    tokio::task::block_in_place(|| {
        c.fleet
            .cachectl(leader, &["members", "replace", &old, &new, "--wait", "60s"])
    })?;
    c.timeline.record(
        "heal",
        format!("cachectl members replace {old_id} {new_id}"),
    );
    let replaced = Instant::now();
    while c.fleet.raft_leader().await.is_none()
        || c.fleet.cache_statuses().await.len() < c.fleet.cache_nodes.len()
    {
        anyhow::ensure!(
            replaced.elapsed() < Duration::from_secs(30),
            "the cluster did not settle after the replacement"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lost = 0;
    for n in &written {
        if c.fleet.read_probe(*n).await != Some(true) {
            lost += 1;
        }
    }
    c.check(
        "no entry lost when a cache node is replaced on an empty disk",
        lost == 0 && written.len() == PROBES as usize,
        format!(
            "{} of {} entries written before read back after node {new_id} replaced node {old_id}",
            written.len() - lost,
            written.len()
        ),
    );
    Ok(())
}
