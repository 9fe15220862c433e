-- GCRA for one message: the sender key and the pair key together (shared/resilience.md §1.7).
-- KEYS[1] sender TAT, KEYS[2] pair TAT, KEYS[3] the pair's consecutive-throttle counter (read only).
-- ARGV[1] now in ms ('' = the server's TIME), ARGV[2] sender interval ms, ARGV[3] sender tolerance ms
-- (burst x interval), ARGV[4] pair interval ms, ARGV[5] pair tolerance ms, ARGV[6] max wait ms for the
-- sender, ARGV[7] max wait ms for the pair.
-- Returns {verdict, wait_ms, pair_has_hits, sender_tat, sender_previous, pair_tat, pair_previous};
-- verdict 'ok' reserves both keys at now + wait (FIFO), 'sender' / 'recipient' consumes nothing.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local EPSILON = 0.001
local function fmt(n)
  return string.format('%.3f', n)
end
local function wait_for(tat, interval, tolerance)
  local wait = tat + interval - tolerance - now
  if wait <= EPSILON then
    return 0
  end
  return wait
end

local s_interval, s_tolerance = tonumber(ARGV[2]), tonumber(ARGV[3])
local p_interval, p_tolerance = tonumber(ARGV[4]), tonumber(ARGV[5])
local s_previous = redis.call('GET', KEYS[1])
local p_previous = redis.call('GET', KEYS[2])
local s_tat = math.max(tonumber(s_previous or now) or now, now)
local p_tat = math.max(tonumber(p_previous or now) or now, now)
local s_wait = wait_for(s_tat, s_interval, s_tolerance)
local p_wait = wait_for(p_tat, p_interval, p_tolerance)
local wait = math.max(s_wait, p_wait)
local hits = redis.call('EXISTS', KEYS[3])
if s_wait > tonumber(ARGV[6]) + EPSILON then
  return {'sender', fmt(wait), hits}
end
if p_wait > tonumber(ARGV[7]) + EPSILON then
  return {'recipient', fmt(wait), hits}
end
local at = now + wait
local s_new = fmt(math.max(s_tat, at) + s_interval)
local p_new = fmt(math.max(p_tat, at) + p_interval)
redis.call('SET', KEYS[1], s_new, 'PX', math.max(1, math.ceil(tonumber(s_new) - now)))
redis.call('SET', KEYS[2], p_new, 'PX', math.max(1, math.ceil(tonumber(p_new) - now)))
return {'ok', fmt(wait), hits, s_new, s_previous or '', p_new, p_previous or ''}
