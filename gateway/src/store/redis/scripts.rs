//! The Lua scripts that make each store operation atomic in Redis.
//!
//! Every key a script touches shares one hash tag (`{prefix}`), so the scripts also run on Redis
//! Cluster (one slot holds the fleet's token cache: it is small, and atomicity matters more than
//! spreading it). Numbers are milliseconds or versions below 2^53, exact in Lua's doubles.
//!
//! Layout under the tag `{p}`:
//! - `{p}:e:<key hex>`: hash `v` version, `d` sealed entry (JSON), `u` last use, `r` refresh time;
//!   its Redis TTL is the token's expiry.
//! - `{p}:due`: sorted set of key hexes by refresh time (the refresher's work list); entries
//!   that are not renewable (refresh time at or past expiry) never enter it.
//! - `{p}:index`: sorted set of every stored entry's key hex by expiry (listings). Each put
//!   drops the members that have expired, so it holds about the live entries, never more.
//!   (Versions before it kept a set `{p}:keys`, which can be deleted.)
//! - `{p}:fence`: the newest fencing token granted.
//! - `{p}:lease`: `"<holder> <fence>"`, with the lease TTL.
//! - `{p}:fill:<key hex>`: fill-lease holder, with a short TTL.
//! - `{p}:epoch`: a random value set once: if it changes, Redis lost its data (it restarted
//!   empty, or was flushed), and nodes write back the tokens they still hold.
//! - `{p}:rate:<key hex>`: a rate limit's next arrival time in microseconds of Redis' clock
//!   (`TIME`), expiring once it is in the past.
//! - channel `{p}:events`: `s <hex> <version>` on store, `e <hex>` on evict.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// Fenced put-if-newer, releasing the writer's fill lease when it names itself.
/// KEYS: entry, fence, due, index, fill lease. ARGV: version, payload, expires_at, fence or "",
/// refresh_at, hex, channel, last_used, fill-lease holder or "". Returns `stored`, `stale` or
/// `fenced`.
pub static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[9] ~= '' and redis.call('GET', KEYS[5]) == ARGV[9] then redis.call('DEL', KEYS[5]) end
if ARGV[4] ~= '' then
  local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[4]) < newest then return 'fenced' end
end
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 'stale' end
local used = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if tonumber(ARGV[8]) > used then used = tonumber(ARGV[8]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'u', used, 'r', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
if tonumber(ARGV[5]) < tonumber(ARGV[3]) then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6]) end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('PUBLISH', ARGV[7], 's ' .. ARGV[6] .. ' ' .. ARGV[1])
return 'stored'
",
    )
});

/// One step of a rate limit (GCRA, see `store::rate`), timed by Redis' clock so that every
/// gateway shares one. KEYS: the rate key. ARGV: interval, tolerance (microseconds). Returns 0
/// when the request passes, otherwise the microseconds to wait. Microsecond timestamps are
/// below 2^53, exact in Lua's doubles.
pub static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait > 0 then return wait end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
return 0
",
    )
});

/// Evict, optionally only a given version.
/// KEYS: entry, due, index. ARGV: version or "", hex, channel. Returns 1 if removed.
pub static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'e ' .. ARGV[2])
return 1
",
    )
});

/// The entry if present, else the fill lease: one round trip for a miss.
/// KEYS: entry, fill lease. ARGV: holder, ttl ms.
/// Returns `{'e', payload, last use, refresh time}` or `{'l', '1' if held else '0'}`.
pub static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HMGET', KEYS[1], 'd', 'u', 'r')
if e[1] then return {'e', e[1], e[2] or '0', e[3] or ''} end
local cur = redis.call('GET', KEYS[2])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {'l', '1'}
end
return {'l', '0'}
",
    )
});

/// Put off a renewal: the refresh time `r` moves to `until`, and with it the entry's place in
/// the work list (if it is there; a later use puts it back at `r`).
/// KEYS: entry, due, fence. ARGV: until, hex, fence or "". Returns 1 if postponed.
pub static POSTPONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[3] ~= '' then
  local newest = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tonumber(ARGV[3]) < newest then return 0 end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', ARGV[1], ARGV[2])
return 1
",
    )
});

/// The store's epoch, set to `ARGV[1]` if it has none. KEYS: epoch. Returns the epoch.
pub static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
",
    )
});

/// Take or extend a per-key fill lease. KEYS: lease. ARGV: holder, ttl ms. Returns 1 if held.
pub static FILL_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// Delete a fill lease if `holder` holds it. KEYS: lease. ARGV: holder.
pub static RELEASE_FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

/// Take or renew the refresh lease. KEYS: lease, fence. ARGV: holder, ttl ms.
/// Returns the fence, or nil when another node holds the lease.
///
/// A new grant is `max(counter + 1, Redis' clock in ms)`. The counter alone could repeat a
/// fence after a failover to a replica that had not received the last grant (or after Redis lost
/// its data); the clock has moved on by the failover's seconds since then, so the new fence is
/// above any granted before and a leader from before stays fenced off.
pub static ACQUIRE_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, fence = string.match(cur, '^(%S+) (%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(fence)
  end
  return false
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fence = redis.call('INCR', KEYS[2])
if fence <= now then
  fence = now
  redis.call('SET', KEYS[2], fence)
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
",
    )
});

/// Give the refresh lease up if `holder` has it. KEYS: lease. ARGV: holder.
pub static RELEASE_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%S+) ') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

/// Entries due for refresh and used recently. Idle or vanished entries leave the work list
/// (a later use puts an idle one back, see TOUCH).
/// KEYS: due. ARGV: now, used_since, limit, entry key prefix. Returns key hexes.
pub static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local u = redis.call('HGET', ARGV[4] .. id, 'u')
  if not u or tonumber(u) < tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[1], id)
  else
    table.insert(out, id)
  end
end
return out
",
    )
});

/// Record uses. KEYS: due. ARGV: entry key prefix, then pairs of hex and time.
pub static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #ARGV, 2 do
  local k = ARGV[1] .. ARGV[i]
  local u = redis.call('HGET', k, 'u')
  if u then
    if tonumber(ARGV[i + 1]) > tonumber(u) then redis.call('HSET', k, 'u', ARGV[i + 1]) end
    local r = redis.call('HGET', k, 'r')
    if r then redis.call('ZADD', KEYS[1], 'NX', r, ARGV[i]) end
  end
end
return 1
",
    )
});

/// Make a renewable entry due now (operators' `cachectl refresh`). Renewable entries are the
/// ones in the due index; `r` overrides the entry's own refresh time when earlier (an operator's
/// mark) or later (a failed renewal's backoff, which the mark cancels).
/// KEYS: entry, due. ARGV: now, hex. Returns 1 if marked.
pub static MARK_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
local used = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if tonumber(ARGV[1]) > used then used = tonumber(ARGV[1]) end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'u', used)
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
",
    )
});
