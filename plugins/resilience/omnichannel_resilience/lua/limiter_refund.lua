-- A cancelled waiter gives its reservation back (best effort).
-- KEYS[1] sender TAT, KEYS[2] pair TAT. ARGV[1] now in ms ('' = TIME), ARGV[2] sender interval ms,
-- ARGV[3] pair interval ms, ARGV[4] / ARGV[6] the TATs the reservation stored, ARGV[5] / ARGV[7] the
-- TATs before it ('' = none). Exactly undone if nobody reserved since; else one interval is returned.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function store(key, tat)
  local ttl = math.ceil(tat - now)
  if ttl > 0 then
    redis.call('SET', key, string.format('%.3f', tat), 'PX', ttl)
  else
    redis.call('DEL', key)
  end
end
local function give_back(key, interval, reserved, previous)
  local current = redis.call('GET', key)
  if not current then
    return
  end
  if current == reserved then
    if previous == '' then
      redis.call('DEL', key)
    else
      store(key, tonumber(previous))
    end
  else
    store(key, tonumber(current) - interval)
  end
end
give_back(KEYS[1], tonumber(ARGV[2]), ARGV[4], ARGV[5])
give_back(KEYS[2], tonumber(ARGV[3]), ARGV[6], ARGV[7])
return 1
