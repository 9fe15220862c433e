-- Circuit breaker state in one Redis hash (shared/resilience.md §1.3.2 and §1.3.4).
-- This prelude is prepended to each breaker script; it loads the hash, applies the time-driven
-- transitions (rows 7 and 14) and writes back only what changed.
--
-- KEYS[1]  the breaker hash
-- ARGV[1]  now in ms ('' = the server's TIME), ARGV[2] failure_threshold, ARGV[3] open_ms,
-- ARGV[4]  success_threshold, ARGV[5] half_open_permits, ARGV[6] half_open_max_ms,
-- ARGV[7]  open_backoff_multiplier, ARGV[8] max_open_ms, ARGV[9] state_ttl_ms; ARGV[10..] per script.
--
-- Hash fields: state, gen, open_until_ms, open_count, consecutive_failures, probe_successes,
-- updated_ms, and one field 'p:<lease id>' = '<admitted_ms>:<expires_ms>' per half-open probe lease.
-- A missing hash is CLOSED with every counter at 0.
local key = KEYS[1]
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local failure_threshold = tonumber(ARGV[2])
local open_ms = tonumber(ARGV[3])
local success_threshold = tonumber(ARGV[4])
local half_open_permits = tonumber(ARGV[5])
local half_open_max_ms = tonumber(ARGV[6])
local multiplier = tonumber(ARGV[7])
local max_open_ms = tonumber(ARGV[8])
local state_ttl_ms = tonumber(ARGV[9])

local function fmt(n)
  return string.format('%d', n)
end

local h = {state = 'closed', gen = 0, open_until_ms = 0, open_count = 0, consecutive_failures = 0,
           probe_successes = 0}
local leases = {}
local existed = false
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do
  existed = true
  local field, value = raw[i], raw[i + 1]
  if string.sub(field, 1, 2) == 'p:' then
    local admitted, expires = string.match(value, '^(%d+):(%d+)$')
    if admitted then
      table.insert(leases, {id = string.sub(field, 3), admitted = tonumber(admitted), expires = tonumber(expires)})
    end
  elseif field == 'state' then
    h.state = value
  elseif h[field] ~= nil then
    h[field] = tonumber(value) or 0
  end
end

local dirty = false
local dropped = {}
local transitions = {}

local function drop_lease(lease)
  table.insert(dropped, 'p:' .. lease.id)
  dirty = true
end

local function clear_counters()
  h.consecutive_failures = 0
  h.probe_successes = 0
  for _, lease in ipairs(leases) do
    drop_lease(lease)
  end
  leases = {}
end

local function transition(target)
  local previous = h.state
  h.state = target
  h.gen = h.gen + 1
  dirty = true
  if previous ~= target then
    table.insert(transitions, previous)
    table.insert(transitions, target)
  end
end

-- Rows 3, 12 and 14: wait(n) = min(open_ms * multiplier^(n-1), max_open_ms).
local function open_at(t)
  h.open_count = h.open_count + 1
  local wait = open_ms * multiplier ^ (h.open_count - 1)
  if wait > max_open_ms then
    wait = max_open_ms
  end
  h.open_until_ms = t + math.floor(wait + 0.5)
  clear_counters()
  transition('open')
end

-- Rows 7 and 14, each dated when it became due. A lease that expired before its probe's
-- half-open deadline is reclaimed (its worker is presumed dead); otherwise the deadline re-opens.
local function refresh()
  while true do
    if h.state == 'open' and now >= h.open_until_ms then
      clear_counters()
      transition('half_open')
    elseif h.state == 'half_open' and #leases > 0 then
      local kept, oldest = {}, nil
      for _, lease in ipairs(leases) do
        if lease.expires <= now and lease.expires < lease.admitted + half_open_max_ms then
          drop_lease(lease)
        else
          table.insert(kept, lease)
          if oldest == nil or lease.admitted < oldest then
            oldest = lease.admitted
          end
        end
      end
      leases = kept
      if oldest ~= nil and now >= oldest + half_open_max_ms then
        open_at(oldest + half_open_max_ms)
      else
        return
      end
    else
      return
    end
  end
end

local function reply(status)
  if dirty then
    if #dropped > 0 then
      redis.call('HDEL', key, unpack(dropped))
    end
    redis.call('HSET', key, 'state', h.state, 'gen', fmt(h.gen), 'open_until_ms', fmt(h.open_until_ms),
      'open_count', fmt(h.open_count), 'consecutive_failures', fmt(h.consecutive_failures),
      'probe_successes', fmt(h.probe_successes), 'updated_ms', fmt(now))
    redis.call('PEXPIRE', key, state_ttl_ms)
  end
  local result = {status, h.state, h.gen, h.consecutive_failures, h.open_until_ms, now, h.probe_successes,
                  #leases, h.open_count}
  for _, name in ipairs(transitions) do
    table.insert(result, name)
  end
  return result
end
