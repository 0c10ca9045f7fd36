/**
 * The Lua side of the Redis store. Each script is one atomic step that reads the server's clock
 * (`TIME`), so every gateway sees the same time and the same state. They port the functions of
 * arithmetic.ts; keep the two in step (the store suite runs against both stores).
 *
 * Numbers go back as strings: Redis truncates a Lua number to an integer reply.
 */

const PRELUDE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local EPS = 0.001
local function fmt(x) return string.format('%.17g', x) end
local function units(ms, interval) return math.max(0, math.floor((ms + EPS) / interval)) end
`;

/**
 * KEYS: buckets. ARGV: five per key (intervalMs, burst, cost, commit 0/1, blocking 0/1).
 * Returns per key { allowed 0/1, remaining, retryAfterMs (-1 = never), resetAfterMs }.
 */
export const CONSUME = `${PRELUDE}
local pending = {}
local order = {}
local commit = true
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  local interval = tonumber(ARGV[a + 1])
  local burst = tonumber(ARGV[a + 2])
  local cost = tonumber(ARGV[a + 3])
  local stored = pending[key] and pending[key][1] or tonumber(redis.call('HGET', key, 'tat'))
  local depth = burst * interval
  local tat = math.min(math.max(stored or now, now), now + depth)
  local nxt = tat + cost * interval
  if nxt - now > depth + EPS then
    local retry = -1
    if cost <= burst then retry = nxt - depth - now end
    out[i] = { 0, fmt(units(now + depth - tat, interval)), fmt(retry), fmt(tat - now) }
    if ARGV[a + 5] == '1' then commit = false end
  else
    out[i] = { 1, fmt(units(now + depth - nxt, interval)), '0', fmt(nxt - now) }
    if ARGV[a + 4] == '1' and cost > 0 then
      if not pending[key] then table.insert(order, key) end
      pending[key] = { nxt, interval, burst }
    end
  end
end
if commit then
  for _, key in ipairs(order) do
    local b = pending[key]
    redis.call('HSET', key, 'tat', fmt(b[1]), 'interval', fmt(b[2]), 'burst', fmt(b[3]))
    redis.call('PEXPIRE', key, math.max(1, math.ceil(b[1] - now)))
  end
end
return out
`;

/**
 * KEYS[1]: a bucket. ARGV: intervalMs, cost. Gives back units a CONSUME took: on a cluster the
 * buckets of one batch may sit in different slots, each consumed by its own script, and a blocking
 * request refused in one slot takes back what the others wrote. Returns 1 when the bucket existed.
 */
export const REFUND = `${PRELUDE}
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
if not tat then return 0 end
tat = tat - tonumber(ARGV[1]) * tonumber(ARGV[2])
-- A bucket full again is no record at all, as CONSUME lets it expire when full.
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'tat', fmt(tat))
end
return 1
`;

/** KEYS[1]: counter. ARGV: by, windowMs. Returns { count, resetInMs }. */
export const INCREMENT = `
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return { count, ttl }
`;

/** KEYS[1]: slot set (holder → lease end). ARGV: holder, max, leaseMs. Returns { acquired 0/1, held }. */
export const ACQUIRE_SLOT = `${PRELUDE}
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local held = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and held >= tonumber(ARGV[2]) then return { 0, held } end
redis.call('ZADD', KEYS[1], fmt(now + lease), ARGV[1])
-- The set lives as long as its longest lease: a shorter lease taken later must not cut the others short.
local longest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(longest[2]) - now))
return { 1, redis.call('ZCARD', KEYS[1]) }
`;

/** KEYS[1]: slot set. ARGV: holder. Returns the live holders left. */
export const RELEASE_SLOT = `${PRELUDE}
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
return redis.call('ZCARD', KEYS[1])
`;

/** KEYS[1]: triplet record. ARGV: delayMs, retryWindowMs, lifetimeMs. Returns { status, retryInMs }. */
export const GREYLIST = `${PRELUDE}
local delay, window, lifetime = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rec = redis.call('HMGET', KEYS[1], 'first', 'passed')
local first = tonumber(rec[1])
if first and rec[2] == '1' then
  redis.call('PEXPIRE', KEYS[1], lifetime)
  return { 'known', '0' }
end
if first then
  local elapsed = math.max(0, now - first)
  if elapsed < delay then return { 'early', fmt(delay - elapsed) } end
  if elapsed <= window then
    redis.call('HSET', KEYS[1], 'passed', '1')
    redis.call('PEXPIRE', KEYS[1], lifetime)
    return { 'passed', '0' }
  end
end
redis.call('HSET', KEYS[1], 'first', fmt(now), 'passed', '0')
redis.call('PEXPIRE', KEYS[1], window)
return { 'new', fmt(delay) }
`;

/**
 * KEYS: bucket, counter, slots, greylist, value of one key. Returns { now, tat, interval, burst,
 * count, countTtl, held, first, passed, greyTtl, value, valueTtl } (false where absent).
 */
export const INSPECT = `${PRELUDE}
local b = redis.call('HMGET', KEYS[1], 'tat', 'interval', 'burst')
local g = redis.call('HMGET', KEYS[4], 'first', 'passed')
return {
  fmt(now), b[1], b[2], b[3],
  redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[2]),
  redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf'),
  g[1], g[2], redis.call('PTTL', KEYS[4]),
  redis.call('GET', KEYS[5]), redis.call('PTTL', KEYS[5]),
}
`;
