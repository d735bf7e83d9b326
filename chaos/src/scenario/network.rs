//! Faults on the links between nodes: partitions, a gateway cut off from the store or the IdP,
//! a slow and lossy link. On a fleet of containers they are packet filters inside a container's
//! network namespace; on processes, relays the harness cuts.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::driver::identity;
use crate::fleet::StoreKind;

/// How long a partition of the Raft leader lasts.
const RAFT_PARTITION: Duration = Duration::from_secs(3);
/// Probe writes during a partition are this far apart.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Redis: the refresh leader cut off from Redis for longer than its lease. Raft: the cache
/// service's leader cut off from its peers; the majority elects another, gateways follow, the
/// old leader steps down, and every write acknowledged during the partition survives.
pub(super) async fn partition_leader(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    if c.fleet.spec.store != StoreKind::Raft {
        let leader = c.refresh_leader().await?;
        c.fleet.cut_store(leader, true)?;
        c.timeline.record(
            "fault",
            format!("gateway-{} cut off from Redis", leader + 1),
        );
        let cut_for = c.fleet.spec.lease_ttl + Duration::from_secs(1);
        tokio::time::sleep(cut_for).await;
        c.fleet.cut_store(leader, false)?;
        c.record_store_cut(cut_for);
        c.timeline
            .record("heal", format!("gateway-{} reconnected", leader + 1));
        return Ok(());
    }
    let leader = c.raft_leader().await?;
    c.fleet.cut_cache_peers(leader, true)?;
    let cut_at = Instant::now();
    c.timeline.record(
        "fault",
        format!(
            "cache-node-{} (Raft leader) cut off from its peers",
            leader + 1
        ),
    );
    let (elected, acked) = tokio::join!(
        c.new_raft_leader(leader, RAFT_PARTITION),
        write_probes(c, RAFT_PARTITION)
    );
    if let Some((l, after)) = elected {
        c.timeline.record(
            "raft",
            format!("the majority elected cache-node-{} after {after:?}", l + 1),
        );
    }
    c.check(
        "the majority elects a leader during the partition",
        elected.is_some(),
        elected.map_or_else(
            || format!("no leader among the other nodes within {RAFT_PARTITION:?}"),
            |(l, after)| format!("cache-node-{} after {after:?}", l + 1),
        ),
    );
    tokio::time::sleep_until((cut_at + RAFT_PARTITION).into()).await;
    c.fleet.cut_cache_peers(leader, false)?;
    c.timeline
        .record("heal", format!("cache-node-{} reconnected", leader + 1));

    // Healed, the old leader follows the new one: all three agree on a leader that is not it.
    let healed = Instant::now();
    let mut agreed = None;
    while healed.elapsed() < Duration::from_secs(10) {
        if let Some(l) = c.fleet.raft_leader().await
            && c.fleet.cache_statuses().await.len() == c.fleet.cache_nodes.len()
        {
            agreed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.check(
        "the old leader steps down",
        agreed.is_some_and(|l| l != leader),
        match agreed {
            Some(l) => format!(
                "all nodes follow cache-node-{} {:?} after healing",
                l + 1,
                healed.elapsed()
            ),
            None => "the nodes did not agree on a leader within 10 s of healing".into(),
        },
    );
    let mut lost = Vec::new();
    for n in &acked {
        if c.fleet.read_probe(*n).await != Some(true) {
            lost.push(*n);
        }
    }
    c.check(
        "no write acknowledged during the partition is lost",
        lost.is_empty() && !acked.is_empty(),
        format!(
            "{} of {} acknowledged writes read back after healing{}",
            acked.len() - lost.len(),
            acked.len(),
            if lost.is_empty() {
                String::new()
            } else {
                format!("; lost: {lost:?}")
            }
        ),
    );
    Ok(())
}

/// Writes probe entries one after another for `during`; the ones the store acknowledged.
async fn write_probes(c: &Ctx, during: Duration) -> Vec<u32> {
    let until = Instant::now() + during;
    let (mut n, mut acked) = (0, Vec::new());
    while Instant::now() < until {
        if c.fleet.write_probe(n).await {
            acked.push(n);
        }
        n += 1;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    acked
}

/// A gateway that does not hold the refresh lease cut off from the store for longer than a
/// lease: it serves what its L1 holds; a credential it has never seen still gets a token of
/// its own from the IdP (the store outage's promise: per-node single flight, never a foreign or
/// expired token); healed, it reports the store ready again.
pub(super) async fn cut_gateway_from_store(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    let n = c.fleet.gateways.len();
    let victim = match c.refresh_leader().await.ok() {
        Some(l) => (l + 1 + c.pick(n - 1)) % n,
        None => c.pick(n),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    c.fleet.cut_store(victim, true)?;
    c.timeline.record(
        "fault",
        format!("gateway-{} cut off from the store", victim + 1),
    );
    let cut_for = c.fleet.spec.lease_ttl + Duration::from_secs(2);
    let cut_at = Instant::now();
    // A credential new to the whole fleet, asked of the cut-off gateway alone.
    let (id, secret) = identity(10_000 + victim);
    c.fleet.idp.register(&id, &secret);
    let (mut answers, mut ok) = (0, 0);
    while cut_at.elapsed() < cut_for {
        let r = http
            .get(format!(
                "{}/chaos/new-credential",
                c.fleet.gateway_url(victim)
            ))
            .basic_auth(&id, Some(&secret))
            .send()
            .await;
        answers += 1;
        if r.is_ok_and(|r| r.status() == 200) {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issued = c.fleet.idp.issued(&id);
    c.check(
        "a new credential is served during the store outage",
        ok == answers && issued >= 1,
        format!("{ok} of {answers} requests answered 200; the IdP issued {issued} tokens to it"),
    );
    tokio::time::sleep_until((cut_at + cut_for).into()).await;
    // At the end of the cut, an entry every gateway holds in its L1 is evicted fleet-wide,
    // which this one cannot hear of, and another gateway fetches its next token at once:
    // healed, the cut-off gateway must not bring the evicted token back into the store, and
    // its L1 must hold no older token for that client than the fleet's.
    let other = (victim + 1) % n;
    let held = forwarded_token(&http, c, victim, 0).await;
    let (evicted_key, evicted_version) = c.fleet.evict_client(&identity(0).0).await?;
    c.record_eviction();
    c.timeline.record(
        "fault",
        format!(
            "client-0's entry evicted fleet-wide while gateway-{} is cut off",
            victim + 1
        ),
    );
    // The other gateway hears of the eviction through the store and takes a new token.
    let asked = Instant::now();
    let mut fleet_token = forwarded_token(&http, c, other, 0).await;
    while fleet_token == held && asked.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fleet_token = forwarded_token(&http, c, other, 0).await;
    }
    c.fleet.cut_store(victim, false)?;
    c.record_store_cut(cut_at.elapsed());
    c.timeline
        .record("heal", format!("gateway-{} reconnected", victim + 1));
    let healed = Instant::now();
    let mut ready = false;
    while healed.elapsed() < Duration::from_secs(10) {
        if let Some((200, body)) = c.fleet.readyz(victim).await
            && body.contains("\"store\":\"ok\"")
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.check(
        "the cut-off gateway finds the store again",
        ready,
        format!(
            "/readyz says the store is ok {:?} after healing",
            healed.elapsed()
        ),
    );
    let mut resurrected = false;
    while healed.elapsed() < Duration::from_secs(5) {
        resurrected |= c.fleet.entry_version(&evicted_key).await == Some(Some(evicted_version));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cut off, the victim missed the eviction and kept its token while another took a newer
    // one. Healed, its L1 catches up with the store at once, not at the token's next renewal:
    // it sends a token at least as new as the fleet's (newer if it renewed on its own).
    let serial = |t: &Option<String>| t.as_deref().and_then(jti);
    let diverged = matches!((serial(&held), serial(&fleet_token)), (Some(a), Some(b)) if a < b);
    let ready_at = healed.elapsed();
    let mut caught_up = None;
    while diverged && ready && healed.elapsed() < ready_at + Duration::from_secs(2) {
        let ours = serial(&forwarded_token(&http, c, victim, 0).await);
        if ours.is_some() && ours >= serial(&fleet_token) {
            caught_up = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.check(
        "the healed gateway's L1 catches up with the eviction it missed",
        caught_up.is_some(),
        match caught_up {
            _ if !diverged => format!(
                "before healing, client-0's requests through gateway-{} did not carry an older \
                 token than through gateway-{} ({:?} and {:?})",
                victim + 1,
                other + 1,
                serial(&held),
                serial(&fleet_token)
            ),
            Some(after) => format!(
                "gateway-{} sent a token at least as new as the fleet's for client-0 {after:?} \
                 after healing (the store was ready after {ready_at:?})",
                victim + 1
            ),
            None => format!(
                "gateway-{} still sent an older token for client-0 than the fleet's 2 s after \
                 the store was ready",
                victim + 1
            ),
        },
    );
    c.check(
        "an entry evicted during the cut is not brought back",
        !resurrected,
        format!(
            "client-0's evicted version {} {} in the store within 5 s of healing",
            evicted_version,
            if resurrected {
                "reappeared"
            } else {
                "never reappeared"
            }
        ),
    );
    Ok(())
}

/// The fake IdP's serial number of a token it issued (its `jti`), which orders its tokens; the
/// token verified with the IdP's key, as the upstream does.
fn jti(token: &str) -> Option<u64> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &testkit::idp::FakeIdp::decoding_key(),
        &validation,
    )
    .ok()?
    .claims;
    claims["jti"].as_str()?.parse().ok()
}

/// The bearer token gateway `gateway` sends upstream for client `client`, read from the echo
/// upstream's answer (`None`: the request failed).
async fn forwarded_token(
    http: &reqwest::Client,
    c: &Ctx,
    gateway: usize,
    client: usize,
) -> Option<String> {
    let (id, secret) = identity(client);
    let answer: serde_json::Value = http
        .get(format!("{}/chaos/l1", c.fleet.gateway_url(gateway)))
        .basic_auth(&id, Some(&secret))
        .header(testkit::upstream::CALLER_HEADER, &id)
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    let authorization = answer["headers"]["authorization"][0].as_str()?;
    Some(authorization.strip_prefix("Bearer ")?.to_owned())
}

/// The refresh leader alone loses the IdP while renewals fall due, for less than a token's
/// refresh margin: its renewals fail and are retried, every request is served.
pub(super) async fn cut_idp_from_leader(c: &Ctx) -> anyhow::Result<()> {
    let (start, length) = c.renewal_window()?;
    c.timeline.until(start).await;
    let leader = c.refresh_leader().await?;
    c.fleet.cut_idp(leader, true)?;
    c.timeline.record(
        "fault",
        format!(
            "gateway-{} (refresh leader) cannot reach the IdP for {length:?}",
            leader + 1
        ),
    );
    tokio::time::sleep(length).await;
    c.fleet.cut_idp(leader, false)?;
    c.timeline
        .record("heal", format!("gateway-{} reaches the IdP", leader + 1));
    Ok(())
}

/// One gateway's link drops 5 % of the packets it receives and carries 2 Mbit/s at most, for a
/// third of the run.
pub(super) async fn lossy_link(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    let victim = c.pick(c.fleet.gateways.len());
    let (loss, kbit, queue) = (0.05, 2_000, Duration::from_millis(200));
    c.fleet.degrade_link(victim, loss, kbit, queue, true)?;
    c.timeline.record(
        "fault",
        format!(
            "gateway-{}'s link: {:.0} % loss, {kbit} kbit/s",
            victim + 1,
            loss * 100.0
        ),
    );
    tokio::time::sleep(c.duration.mul_f64(0.33)).await;
    c.fleet.degrade_link(victim, loss, kbit, queue, false)?;
    c.timeline
        .record("heal", format!("gateway-{}'s link healthy", victim + 1));
    Ok(())
}

/// The refresh leader is cut off from the store in the middle of a renewal: the IdP holds its
/// answer, the leader loses the store, the answer goes out. Another gateway takes the lease and
/// renews; healed, the old leader's late write is fenced off (the fence never goes back, no
/// expired token reaches the upstream).
pub(super) async fn isolate_leader_mid_refresh(c: &Ctx) -> anyhow::Result<()> {
    let hold = c.hold_a_renewal().await?;
    let leader = c.refresh_leader().await?;
    c.fleet.cut_store(leader, true)?;
    c.timeline.record(
        "fault",
        format!(
            "gateway-{} (refresh leader, awaiting the IdP) cut off from the store",
            leader + 1
        ),
    );
    hold.release();
    let cut_for = c.fleet.spec.lease_ttl + Duration::from_secs(1);
    let cut_at = Instant::now();
    let mut taken_over = None;
    while cut_at.elapsed() < cut_for {
        if let Some(l) = c.fleet.refresh_leader().await
            && l != leader
        {
            taken_over = Some((l, cut_at.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.check(
        "another gateway takes the refresh lease within the lease",
        taken_over.is_some(),
        taken_over.map_or_else(
            || format!("no other holder within {cut_for:?}"),
            |(l, after)| format!("gateway-{} after {after:?}", l + 1),
        ),
    );
    tokio::time::sleep_until((cut_at + cut_for).into()).await;
    c.fleet.cut_store(leader, false)?;
    c.record_store_cut(cut_for);
    c.timeline
        .record("heal", format!("gateway-{} reconnected", leader + 1));
    Ok(())
}
