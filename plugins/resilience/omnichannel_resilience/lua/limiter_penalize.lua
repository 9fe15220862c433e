-- A throttling answer slows one key down: its next request is admitted no earlier than now + pause.
-- KEYS[1] the TAT to push back; KEYS[2] (pair mode only) the pair's consecutive-throttle counter.
-- ARGV[1] now in ms ('' = TIME), ARGV[2] interval ms, ARGV[3] tolerance ms, ARGV[4] the pause floor in
-- ms, ARGV[5] mode ('fixed' | 'pair'), ARGV[6] cap of the pair backoff in ms, ARGV[7] how long the
-- counter outlives the pause, in ms. In pair mode the pause is max(floor, 4^k s), k = earlier hits.
-- Returns the pause in ms.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local interval, tolerance = tonumber(ARGV[2]), tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
if ARGV[5] == 'pair' then
  local hits = redis.call('INCR', KEYS[2]) - 1
  local backoff = math.min(4 ^ math.min(hits, 64) * 1000, tonumber(ARGV[6]))
  pause = math.max(pause, backoff)
  redis.call('PEXPIRE', KEYS[2], math.ceil(pause + tonumber(ARGV[7])))
end
-- Admitted at t iff t >= max(TAT, t) + T - B*T; the earliest t is now + pause when
-- TAT = now + pause + (B - 1)*T. Never shortens a longer pause already there.
local penalized = now + pause + tolerance - interval
local current = tonumber(redis.call('GET', KEYS[1]) or '')
if current and current > penalized then
  penalized = current
end
redis.call('SET', KEYS[1], string.format('%.3f', penalized), 'PX', math.max(1, math.ceil(penalized - now)))
return string.format('%.3f', pause)
