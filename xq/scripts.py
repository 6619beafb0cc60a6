"""Every Lua script xq runs, as named constants, each with its KEYS / ARGV / Output contract.

All state changes of a task are one script call, so Redis applies them atomically: a task is at every
instant in exactly one of: a ready list (queued), the lease set (running), or finished (done/failed).
Times are Redis server time (TIME), never a client clock, so leases do not depend on clock skew between
machines.

Keys are passed through KEYS, with one documented exception: a task record key is `<task key prefix><id>`,
built inside the script from the prefix in ARGV and an id popped from a list. It cannot be declared up
front (the id is only known after the pop) and it shares the queue's `{Q}` hash tag, so it is in the same
Redis Cluster slot as the declared keys.

Events are published as a JSON array of objects `{"id", "queue", "state", "ts"}` (ts in ms; a completion event
built by the supervisor may add "result", see _fast.build_event); queue names
and ids are restricted to characters that need no JSON escaping (see keys.check_queue and ids).
"""

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function event(id, queue, state, ts)
  return '{"id":"' .. id .. '","queue":"' .. queue .. '","state":"' .. state .. '","ts":' .. ts .. '}'
end
local function publish(channel, events)
  if #events > 0 then redis.call('PUBLISH', channel, '[' .. table.concat(events, ',') .. ']') end
end
local function push_chunks(cmd, key, items)
  for i = 1, #items, 4000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 3999, #items)))
  end
end
"""

# KEYS[1] -> xq:{Q}:ready:P, the ready list of the task's priority
# KEYS[2] -> xq:{Q}:wake
# ARGV[1] -> task key prefix xq:{Q}:t:
# ARGV[2] -> task name
# ARGV[3] -> priority (0..9)
# ARGV[4] -> max_retries, or '' for the default (3), which is then not stored
# ARGV[5..] -> per task, 3 values: id, payload, ct ('j' JSON, 'b' raw bytes)
# Output: the number of tasks enqueued
# The record holds only what is not implied, since every field costs Redis time at 200k+ tasks/s: the
# queue is in the key, a missing att is 0, a missing maxr the default, a missing ct 'j', and the enqueue
# time is the first 48 bits of an xq id (foreign producers may set 'enq' instead).
ENQUEUE = _PRELUDE + """
local prefix, name, pri, maxr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids = {}
for i = 5, #ARGV, 3 do
  local key = prefix .. ARGV[i]
  redis.call('HSET', key, 'name', name, 'payload', ARGV[i + 1], 'state', 'queued', 'pri', pri)
  if ARGV[i + 2] ~= 'j' then redis.call('HSET', key, 'ct', ARGV[i + 2]) end
  if maxr ~= '' then redis.call('HSET', key, 'maxr', maxr) end
  ids[#ids + 1] = ARGV[i]
end
push_chunks('RPUSH', KEYS[1], ids)
redis.call('ZADD', KEYS[2], 0, '1')
return #ids
"""

# KEYS -> for each queue in priority order, 12 keys: ready:0 .. ready:9, wake, leases
# ARGV[1] -> max tasks to claim in all
# ARGV[2] -> worker id
# ARGV[3] -> lease duration, ms
# ARGV[4] -> max payload bytes: a larger payload fails its task instead of being handed out
# ARGV[5] -> result ttl, seconds (0 keeps records forever), for records this script finishes
# ARGV[6..] -> for each queue, 3 values: task key prefix, events channel, queue name
# Output: {tasks, notes, leased}: tasks is flat, 6 values a task: queue index (0-based), id, name, payload,
#         ct, attempt; notes is flat, 2 values a skipped id: id, reason (for the supervisor's log); leased is
#         the number of leases held on these queues by anyone after this claim (burst mode waits for 0)
CLAIM = _PRELUDE + """
local now = now_ms()
local want = tonumber(ARGV[1])
local worker = ARGV[2]
local deadline = now + tonumber(ARGV[3])
local maxp = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local out, notes, leased = {}, {}, 0
local nq = (#ARGV - 5) / 3
for q = 1, nq do
  local base = (q - 1) * 12
  local prefix, channel, queue = ARGV[3 + q * 3], ARGV[4 + q * 3], ARGV[5 + q * 3]
  local leases, events = {}, {}
  -- LMPOP pops from the first non-empty level; the next call starts again at that level (skipped
  -- entries do not count towards want, so it may still hold tasks).
  local first = 1
  while want > 0 do
    local args = {11 - first}
    for p = first, 10 do args[#args + 1] = KEYS[base + p] end
    args[#args + 1], args[#args + 2], args[#args + 3] = 'LEFT', 'COUNT', want
    local got = redis.call('LMPOP', unpack(args))
    if not got then break end
    for p = first, 10 do
      if KEYS[base + p] == got[1] then first = p break end
    end
    for _, id in ipairs(got[2]) do
      local key = prefix .. id
      local f = redis.call('HMGET', key, 'name', 'payload', 'ct', 'state', 'att')
      if not f[1] or not f[2] then
        notes[#notes + 1] = id
        notes[#notes + 1] = 'no task record with name and payload at ' .. key .. ': dropped from the queue'
      elseif f[4] ~= 'queued' then
        notes[#notes + 1] = id
        notes[#notes + 1] = 'state is ' .. tostring(f[4]) .. ', not queued: stale queue entry dropped'
      elseif #f[2] > maxp then
        redis.call('HSET', key, 'state', 'failed', 'fin', now, 'error',
                   'payload of ' .. #f[2] .. ' bytes exceeds max_payload of ' .. maxp .. ' bytes')
        if ttl > 0 then redis.call('EXPIRE', key, ttl) end
        events[#events + 1] = event(id, queue, 'failed', now)
      else
        local att = (tonumber(f[5]) or 0) + 1
        redis.call('HSET', key, 'state', 'running', 'att', att, 'claimed', now, 'worker', worker)
        leases[#leases + 1] = deadline
        leases[#leases + 1] = id
        local n = #out
        out[n + 1] = q - 1
        out[n + 2] = id
        out[n + 3] = f[1]
        out[n + 4] = f[2]
        out[n + 5] = f[3] or 'j'
        out[n + 6] = att
        want = want - 1
      end
    end
  end
  if #leases > 0 then push_chunks('ZADD', KEYS[base + 12], leases) end
  publish(channel, events)
  leased = leased + redis.call('ZCARD', KEYS[base + 12])
  -- Work left behind wakes the next idle supervisor; the one that took the marker may have filled up.
  -- (An empty list does not exist in Redis, so one EXISTS over the ten levels tells.)
  if redis.call('EXISTS', unpack(KEYS, base + 1, base + 10)) > 0 then
    redis.call('ZADD', KEYS[base + 11], 0, '1')
  end
end
return {out, notes, leased}
"""

# KEYS[1] -> xq:{Q}:leases
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> result ttl, seconds (0 keeps records forever)
# ARGV[4] -> the event message for these tasks, built by the caller (published as is; '' publishes nothing)
# ARGV[5..] -> per task, 6 values: id, state ('done'|'failed'), result or error text, rct, started ms,
#              finished ms
# Output: the number of records written (a record that expired or was deleted meanwhile is not recreated)
# Cost matters here (one call per task at 100k tasks/s): no EXISTS, HSET's count of new fields tells a
# missing record (all fields new: 'state' is in every live record), which is then deleted again.
COMPLETE = _PRELUDE + """
local prefix, ttl = ARGV[1], tonumber(ARGV[3])
local ids = {}
local written = 0
for i = 5, #ARGV, 6 do
  local id = ARGV[i]
  local key = prefix .. id
  local n, fields
  if ARGV[i + 1] ~= 'done' then
    n, fields = redis.call('HSET', key, 'state', ARGV[i + 1], 'error', ARGV[i + 2], 'started', ARGV[i + 4],
                           'fin', ARGV[i + 5]), 4
  elseif ARGV[i + 3] == 'j' then
    n, fields = redis.call('HSET', key, 'state', 'done', 'result', ARGV[i + 2], 'started', ARGV[i + 4],
                           'fin', ARGV[i + 5]), 4
  else
    n, fields = redis.call('HSET', key, 'state', 'done', 'result', ARGV[i + 2], 'started', ARGV[i + 4],
                           'fin', ARGV[i + 5], 'rct', ARGV[i + 3]), 5
  end
  if n == fields then
    redis.call('DEL', key)
  else
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    written = written + 1
  end
  ids[#ids + 1] = id
end
push_chunks('ZREM', KEYS[1], ids)
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[4]) end
return written
"""

# KEYS[1] -> xq:{Q}:leases
# KEYS[2] -> xq:{Q}:wake
# KEYS[3..12] -> xq:{Q}:ready:0 .. ready:9
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> queue name
# ARGV[4] -> result ttl, seconds
# ARGV[5] -> mode: 'return'  claimed but never started: back to the head of its list, attempt not counted
#                  'retry'   the attempt was lost (child died): back to the head if attempts remain, else failed
#                  'expired' like retry, for every lease past its deadline (ids are ignored)
# ARGV[6] -> error text recorded for retry/expired
# ARGV[7] -> worker id that must hold the task ('' for any; 'expired' ignores it)
# ARGV[8..] -> ids, in queue order
# Output: {requeued ids, failed ids}
RELEASE = _PRELUDE + """
local now = now_ms()
local prefix, channel, queue, ttl, mode, err, holder =
  ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local ids = {}
if mode == 'expired' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
  holder = ''
else
  for i = 8, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local requeued, failed, events, gone = {}, {}, {}, {}
-- LPUSH reverses, so walk backwards to keep the original order at the head of each list.
for i = #ids, 1, -1 do
  local id = ids[i]
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'state', 'att', 'maxr', 'pri', 'worker')
  gone[#gone + 1] = id
  if f[1] == 'running' and (holder == '' or f[5] == holder) then
    local att = tonumber(f[2]) or 1
    local pri = tonumber(f[4]) or 5
    if mode == 'return' then
      redis.call('HSET', key, 'state', 'queued', 'att', math.max(att - 1, 0))
      redis.call('LPUSH', KEYS[3 + pri], id)
      requeued[#requeued + 1] = id
    elseif att > (tonumber(f[3]) or 3) then
      local why = err .. '; gave up after ' .. att .. ' attempts'
      if mode == 'expired' then why = 'lease expired (worker ' .. tostring(f[5]) .. ' lost); ' .. why end
      redis.call('HSET', key, 'state', 'failed', 'fin', now, 'error', why)
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
      failed[#failed + 1] = id
      events[#events + 1] = event(id, queue, 'failed', now)
    else
      local why = err
      if mode == 'expired' then why = 'lease expired (worker ' .. tostring(f[5]) .. ' lost); ' .. err end
      redis.call('HSET', key, 'state', 'queued', 'error', why)
      redis.call('LPUSH', KEYS[3 + pri], id)
      requeued[#requeued + 1] = id
      events[#events + 1] = event(id, queue, 'queued', now)
    end
  end
end
push_chunks('ZREM', KEYS[1], gone)
if #requeued > 0 then redis.call('ZADD', KEYS[2], 0, '1') end
publish(channel, events)
return {requeued, failed}
"""

# KEYS[1] -> xq:{Q}:leases
# ARGV[1] -> task key prefix
# ARGV[2] -> worker id
# ARGV[3] -> lease duration, ms
# ARGV[4..] -> ids this worker believes it holds
# Output: the ids it no longer holds (recovered by another supervisor after its lease ran out)
RENEW = _PRELUDE + """
local deadline = now_ms() + tonumber(ARGV[3])
local leases, lost = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'worker')
  if f[1] == 'running' and f[2] == ARGV[2] then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #leases > 0 then
  for i = 1, #leases, 4000 do
    redis.call('ZADD', KEYS[1], 'XX', unpack(leases, i, math.min(i + 3999, #leases)))
  end
end
return lost
"""

ALL = {"enqueue": ENQUEUE, "claim": CLAIM, "complete": COMPLETE, "release": RELEASE, "renew": RENEW}
