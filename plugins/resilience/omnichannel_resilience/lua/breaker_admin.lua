-- Operator actions (rows 16-18). ARGV[10] the target state.
refresh()
clear_counters()
h.open_count = 0
transition(ARGV[10])
return reply('ok')
