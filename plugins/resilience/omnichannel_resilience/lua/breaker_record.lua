-- An outcome (rows 2-5, 10-13, 15). ARGV[10] the permit's generation, ARGV[11] its lease id ('' if
-- not a probe), ARGV[12] the outcome ('success' | 'failure' | 'ignored' | 'throttled').
local gen, lease_id, outcome = tonumber(ARGV[10]), ARGV[11], ARGV[12]
if not existed and lease_id == '' then
  -- Deleted or expired: a missing hash is CLOSED, so a permit admitted while CLOSED is current.
  h.gen = gen
end
refresh()
if gen ~= h.gen then
  return reply('stale')
end
if h.state == 'half_open' then
  local found = nil
  for i, lease in ipairs(leases) do
    if lease.id == lease_id then
      found = i
    end
  end
  if found == nil then
    -- Its lease expired and was reclaimed: the slot was given away, the outcome changes nothing.
    return reply('expired')
  end
  drop_lease(leases[found])
  table.remove(leases, found)
  if outcome == 'failure' then
    open_at(now)
  elseif outcome == 'success' then
    h.probe_successes = h.probe_successes + 1
    if h.probe_successes >= success_threshold then
      clear_counters()
      h.open_count = 0
      transition('closed')
    end
  end
elseif h.state == 'closed' or h.state == 'metrics_only' then
  if outcome == 'success' then
    if h.consecutive_failures ~= 0 then
      h.consecutive_failures = 0
      dirty = true
    end
  elseif outcome == 'failure' then
    h.consecutive_failures = h.consecutive_failures + 1
    dirty = true
    if h.state == 'closed' and h.consecutive_failures >= failure_threshold then
      open_at(now)
    end
  end
end
return reply('ok')
