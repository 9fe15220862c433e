-- Admission (rows 1, 6-9) or, with mode 'read', a state read (rows 7 and 14 only).
-- ARGV[10] mode ('acquire' | 'read'), ARGV[11] lease id, ARGV[12] lease ttl in ms.
refresh()
local status = 'ok'
if ARGV[10] == 'acquire' then
  if h.state == 'half_open' then
    if #leases < half_open_permits then
      local expires = now + tonumber(ARGV[12])
      redis.call('HSET', key, 'p:' .. ARGV[11], fmt(now) .. ':' .. fmt(expires))
      table.insert(leases, {id = ARGV[11], admitted = now, expires = expires})
      dirty = true
      status = 'probe'
    else
      status = 'refused'
    end
  elseif h.state == 'open' or h.state == 'forced_open' then
    status = 'refused'
  end
end
return reply(status)
