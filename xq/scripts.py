"""Every Lua script xq runs, as named constants, each with its KEYS / ARGV / Output contract.

All state changes of a task are one script call, so Redis applies them atomically: a task is at every
instant in exactly one of: a ready list (queued), the lease set (running), or finished (done/failed).
Times are Redis server time (TIME), never a client clock, so leases do not depend on clock skew between
machines.

Keys are passed through KEYS, with one documented exception: a task record key is `<task key prefix><id>`,
built inside the script from the prefix in ARGV and an id popped from a list. It cannot be declared up
front (the id is only known after the pop) and it shares the queue's `{Q}` hash tag, so it is in the same
Redis Cluster slot as the declared keys.

Events are published as a JSON array of objects `{"id", "queue", "state", "ts"}` (ts in ms), with extra
fields by state: "attempt" and "worker" (running), "next" (retrying: ms of the next attempt), "reason"
(dead), "result" (done, when small JSON; see _fast.build_event).  Scripts build events only while someone is
subscribed to the channel (PUBSUB NUMSUB), so they cost nothing when nobody listens.  Queue names and ids
are restricted to characters that need no JSON escaping (see keys.check_queue and ids); free text goes
through cjson.

Statuses (the `state` field of a task record; see docs/design.md for the state machine):
    scheduled  waiting in sched for its due time (enqueued with delay/eta)
    queued     in a ready list
    running    claimed: leased to a supervisor, in its buffer, ring or a child
    retrying   an attempt failed and attempts remain: in sched until its next attempt
    done       finished; result stored
    dead       out of attempts, or failed without retry: in the dead-letter set, with its reason
    expired    not started before its `expires` time: never ran
    canceled   canceled by request before or while running
"""

import hashlib

from .keys import DEFAULT_KEEP, DEFAULT_KEEP_DEAD


def with_flags(src: str, flags: str) -> str:
    """src (starting with the `#!lua` shebang of _PRELUDE) with `flags=` on its shebang line."""
    assert src.startswith("#!lua\n"), src[:20]
    return f"#!lua flags={flags}\n" + src[len("#!lua\n"):]

# Every script starts with the `#!lua` shebang (Redis >= 7.0): a script without flags may write, so Redis
# refuses it up front (an OOM reply) while it is at maxmemory under noeviction, instead of running it until
# its first write fails half-way.  Scripts that only free memory or rewrite in place say `allow-oom`
# (with_flags).  A new script built on _PRELUDE gets the shebang with it.
_PRELUDE = """#!lua
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function listening(channel)
  return redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0
end
local function event(id, queue, state, ts, extra)
  return '{"id":"' .. id .. '","queue":"' .. queue .. '","state":"' .. state .. '","ts":' .. ts .. (extra or '') .. '}'
end
local function publish(channel, events)
  if #events > 0 then redis.call('PUBLISH', channel, '[' .. table.concat(events, ',') .. ']') end
end
-- The fence of every report about an attempt (COMPLETE, RELEASE, RENEW): only the worker that holds the
-- task, for the attempt it claimed, may end or extend it.  f: the record's state, worker, att.  A holder
-- whose lease ran out (a partition, a long stall) while the task was recovered and claimed again, even
-- by the same worker, no longer matches: its late report is refused, and the newer attempt stands.
local function holds(f, worker, att)
  return f[1] == 'running' and f[2] == worker and f[3] == att
end
-- A refused report, for the reporter's log: id, the attempt reported, and what the record says now.
local function refuse(refused, id, att, f)
  refused[#refused + 1] = id
  refused[#refused + 1] = att
  refused[#refused + 1] = f[1] or ''
  refused[#refused + 1] = f[2] or ''
  refused[#refused + 1] = f[3] or ''
end
-- Reads of producer-written fields are total: no value a producer may write raises a script error.
-- A priority 0..9 (the list a task goes back to), else the default 5.
local function prio(p)
  p = tonumber(p)
  if p and p >= 0 and p <= 9 and p == math.floor(p) then return p end
  return 5
end
local function is_int(v, lo, hi)
  return type(v) == 'number' and v >= lo and v <= hi and v == math.floor(v)
end
-- A record's 'lim' field (JSON) as a table, or nil and what is wrong with it (see docs/protocol.md, Limits).
local function read_lim(lim)
  if not lim then return {} end
  local ok, L = pcall(cjson.decode, lim)
  if not ok or type(L) ~= 'table' then return nil, 'field lim: not a JSON object' end
  if L.ck ~= nil or L.cm ~= nil then
    if type(L.ck) ~= 'string' or #L.ck < 1 or #L.ck > 200 then
      return nil, 'field lim: concurrency key ck is not a string of 1-200 bytes'
    end
    if not is_int(L.cm, 1, 1000000000) then return nil, 'field lim: max concurrency cm is not an integer 1..1000000000' end
  end
  if L.rk ~= nil or L.rn ~= nil or L.rp ~= nil then
    if type(L.rk) ~= 'string' or #L.rk < 1 or #L.rk > 200 then
      return nil, 'field lim: rate key rk is not a string of 1-200 bytes'
    end
    if not is_int(L.rn, 1, 1000000000) then return nil, 'field lim: rate starts rn is not an integer 1..1000000000' end
    if not is_int(L.rp, 1, 99999999999999) then return nil, 'field lim: rate period rp is not an integer 1..99999999999999 ms' end
  end
  return L
end
local function push_chunks(cmd, key, items)
  for i = 1, #items, 4000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 3999, #items)))
  end
end
-- A finished record is kept for the caller's result ttl (seconds; 0: forever), or for the task's own
-- result_ttl (its 'rttl' field, from the enqueue) when it asked for one.
local function expire_finished(key, ttl, rttl)
  local t = tonumber(rttl) or ttl
  if t and t > 0 then redis.call('EXPIRE', key, t) end
end
-- Retention (docs/design.md, "Retention").  The script that finishes a task indexes it by its final
-- state in base..'done' / 'canceled' / 'expired' (id -> Redis time, ms; dead letters are in base..'dead')
-- and then cuts the indexes it grew to the queue's policy (base..'retention': keep, max_age, keep_dead;
-- one HMGET a call; an unset field takes its default):
--   age:   entries older than max_age seconds (default: the result ttl) leave the index, and their
--          records are deleted unless the task asked for its own result_ttl (they then expire by it);
--   count: past `keep` (dead: keep_dead) the oldest entries leave the index and their records are
--          deleted, again except those with their own result_ttl (a dead letter is deleted anyway).
-- A record is deleted only while it is still in the index's state (an id reused after its record
-- expired is left alone).  Each cut takes at most 1000 + 2 x (ids this call added) entries, so a call
-- costs O(its batch) and a lowered policy is caught up over a few calls.  What is removed moves the
-- watermark base..'trimmed' (n removed, fin: the newest removed entry's time, at: when), so that status()
-- of a missing record older than fin can say it was trimmed rather than unknown.
-- grown: {state = {ids finished in it by this call}} for done, canceled, expired (dead: already added)
local function retain(base, now, ttl, grown)
  local p = redis.call('HMGET', base .. 'retention', 'keep', 'max_age', 'keep_dead')
  local keep = tonumber(p[1]) or """ + str(DEFAULT_KEEP) + """
  local age = tonumber(p[2]) or ttl or 0
  local keep_dead = tonumber(p[3]) or """ + str(DEFAULT_KEEP_DEAD) + """
  local removed, newest = 0, 0
  local function cut(index, state, rows)  -- rows: a ZRANGE WITHSCORES reply, oldest first
    if #rows == 0 then return end
    local ids = {}
    for i = 1, #rows, 2 do
      local id = rows[i]
      ids[#ids + 1] = id
      local key = base .. 't:' .. id
      local f = redis.call('HMGET', key, 'state', 'rttl')
      if f[1] == state and (state == 'dead' or not f[2]) then redis.call('DEL', key) end
    end
    removed = removed + #ids
    newest = math.max(newest, tonumber(rows[#rows]))
    push_chunks('ZREM', index, ids)
  end
  for state, ids in pairs(grown) do
    if #ids > 0 then
      local index = base .. state
      local entries = {}
      for _, id in ipairs(ids) do entries[#entries + 1] = now; entries[#entries + 1] = id end
      push_chunks('ZADD', index, entries)
      local batch = 1000 + #entries
      if age > 0 then
        cut(index, state, redis.call('ZRANGEBYSCORE', index, '-inf', now - age * 1000, 'WITHSCORES', 'LIMIT', 0, batch))
      end
      local excess = redis.call('ZCARD', index) - keep
      if excess > 0 then cut(index, state, redis.call('ZRANGE', index, 0, math.min(excess, batch) - 1, 'WITHSCORES')) end
    end
  end
  local excess = redis.call('ZCARD', base .. 'dead') - keep_dead
  if excess > 0 then cut(base .. 'dead', 'dead', redis.call('ZRANGE', base .. 'dead', 0, math.min(excess, 2000) - 1, 'WITHSCORES')) end
  if removed > 0 then
    local w = base .. 'trimmed'
    redis.call('HINCRBY', w, 'n', removed)
    if newest > (tonumber(redis.call('HGET', w, 'fin')) or 0) then redis.call('HSET', w, 'fin', newest) end
    redis.call('HSET', w, 'at', now)
  end
end
-- Attempt history: a JSON array in the record's 'hist' field, one object per attempt that did not succeed
-- (a successful attempt is the record's own att/worker/started/fin).  The error is split into its first
-- line and a traceback cut to its last 2000 bytes.
local function add_history(key, hist, att, worker, started, finished, outcome, err)
  err = err or ''
  local nl = string.find(err, '\\n', 1, true)
  local msg, tb = err, ''
  if nl then msg, tb = string.sub(err, 1, nl - 1), string.sub(err, nl + 1) end
  if #msg > 500 then msg = string.sub(msg, 1, 500) .. '...' end
  if #tb > 2000 then tb = '...' .. string.sub(tb, -2000) end
  local e = cjson.encode({n = att, worker = worker or '', start = tonumber(started), ['end'] = tonumber(finished),
                          outcome = outcome, error = msg, traceback = tb})
  if hist and #hist > 2 then hist = string.sub(hist, 1, -2) .. ',' .. e .. ']' else hist = '[' .. e .. ']' end
  redis.call('HSET', key, 'hist', hist)
end
-- An attempt ended without success: schedule the next one if attempts remain and retry is allowed
-- (delay < 0: no retry), else the task is dead.  Returns the event.
local function attempt_failed(key, id, queue, now, sched, dead, f, started, finished, outcome, err, delay, why)
  -- f: HMGET of att, maxr, worker, hist
  local att = tonumber(f[1]) or 1
  -- attempts since the last replay (att keeps counting across replays: see REPLAY) against the budget
  local used = att - (tonumber(redis.call('HGET', key, 'att0')) or 0)
  if not (used >= 1 and used <= att) then used = att end
  local maxr = tonumber(f[2])  -- producer-written: past the limit of 1000 counts as 1000, junk as the default
  if not (maxr and maxr >= 0) then maxr = 3 elseif maxr > 1000 then maxr = 1000 end
  add_history(key, f[4], att, f[3], started, finished, outcome, err)
  if delay >= 0 and used <= maxr then
    local due = now + delay
    redis.call('HSET', key, 'state', 'retrying', 'due', due, 'error', err)
    redis.call('HDEL', key, 'progress')  -- the next attempt starts from nothing
    redis.call('ZADD', sched, due, id)
    return event(id, queue, 'retrying', now, ',"attempt":' .. att .. ',"next":' .. due), due
  end
  local reason, what = why, outcome
  if outcome == 'timeout' then  -- at a glance: how long it was given (the canceler's text names it)
    local s = string.match(err, 'its timeout of ([%d%.e%+%-]+) s')
    what = s and ('timed out after ' .. s .. ' s') or 'timed out'
  end
  if reason then
  elseif delay < 0 then reason = what .. ', not retried'
  else reason = what .. ' on the last of ' .. used .. ' attempts' end
  redis.call('HSET', key, 'state', 'dead', 'fin', finished, 'dead', now, 'reason', reason, 'error', err)
  redis.call('PERSIST', key)
  redis.call('ZADD', dead, now, id)
  return event(id, queue, 'dead', now, ',"reason":' .. cjson.encode(reason)), nil
end

-- Stats history (xq/stats.py, docs/design.md "Stats history"): a failed attempt counts as retried (due) or
-- dead in the minute of `now`, with its run time in microseconds, for the whole queue and for its task name.
-- stn is the queue's xq:{Q}:stn, passed in KEYS only while stats are on; the hour keys are built from it
-- like the flow keys (same hash tag).  The rare path: the supervisors count done tasks themselves.
local function count_failed(stn, key, name, now, due, started, finished)
  name = name or redis.call('HGET', key, 'name') or ''
  local base = string.sub(stn, 1, -4)
  local hour = math.floor(now / 3600000)
  local off = (math.floor(now / 60000) % 60) * 136
  local us = ((tonumber(finished) or now) - (tonumber(started) or now)) * 1000
  if not (us >= 0) then us = 0 elseif us > 1e12 then us = 1e12 end
  local r, d = 1, 0
  if not due then r, d = 0, 1 end
  for _, k in ipairs({base .. 'st:' .. hour, base .. 'st:' .. hour .. ':' .. name}) do
    redis.call('BITFIELD', k, 'OVERFLOW', 'SAT', 'INCRBY', 'u32', off + 32, r, 'INCRBY', 'u32', off + 64, d,
               'INCRBY', 'u40', off + 96, string.format('%d', us), 'INCRBY', 'u8', 8152, 0)  -- stats.SIZE_OP
    redis.call('EXPIRE', k, 90000)
  end
  redis.call('ZADD', stn, hour, name)
  redis.call('EXPIRE', stn, 90000)
end

-- Flow control (unique keys, dependencies, groups, per-key concurrency, rate limits) keeps its keys under
-- the queue's base 'xq:{Q}:' (a task key prefix less its 't:'), built here from the names and ids in a
-- task's record: they are not known before the record is read, and all share the queue's hash tag.
local function base_of(prefix)
  return string.sub(prefix, 1, -3)
end
-- A task whose wait ended (its dependencies are done, or its group finished): due later, it is scheduled,
-- else it joins the tail of its ready list.
local function make_ready(ctx, id, key, pri, due, now)
  local base = ctx.base
  local d = tonumber(due)
  if d and d > now and d < 1e14 then
    redis.call('HSET', key, 'state', 'scheduled')
    redis.call('ZADD', base .. 'sched', d, id)
    if ctx.listen then ctx.events[#ctx.events + 1] = event(id, ctx.queue, 'scheduled', now, ',"next":' .. due) end
  else
    redis.call('HSET', key, 'state', 'queued')
    redis.call('RPUSH', base .. 'ready:' .. prio(pri), id)
    if ctx.listen then ctx.events[#ctx.events + 1] = event(id, ctx.queue, 'queued', now) end
  end
  redis.call('ZADD', base .. 'wake', 0, '1')
end
-- Move parked tasks of a concurrency key back to the head of their ready lists, as many as slots are free
-- (slots of holders whose lease ran out are free: a crashed holder's token expires with its lease).
-- Canceled entries are dropped; an entry that will expire is moved without using up a slot.
local function unpark(base, ck, cm, now)
  local wait = base .. 'cw:' .. ck
  if redis.call('EXISTS', wait) == 0 then return end  -- the common case: nothing parked
  local slots = base .. 'c:' .. ck
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local free = cm - redis.call('ZCARD', slots)
  local moved = 0
  while free > 0 do
    local id = redis.call('LPOP', wait)
    if not id then break end
    local f = redis.call('HMGET', base .. 't:' .. id, 'state', 'pri', 'exp', 'att')
    if f[1] == 'queued' then
      redis.call('LPUSH', base .. 'ready:' .. prio(f[2]), id)
      moved = moved + 1
      if not (f[3] and (tonumber(f[4]) or 0) == 0 and (tonumber(f[3]) or math.huge) <= now) then free = free - 1 end
    end
  end
  if moved > 0 then redis.call('ZADD', base .. 'wake', 0, '1') end
end
-- An attempt of a task ended, whatever its outcome: a concurrency slot it held goes back (lim: the
-- record's 'lim' field, JSON).
local function release_slot(base, lim, id, now)
  local L = lim and read_lim(lim)
  if not L or not L.ck then return end
  redis.call('ZREM', base .. 'c:' .. L.ck, id)
  unpark(base, L.ck, L.cm, now)
end
-- The last member of a group ended: record the group as finished, and hand the callback (if any) the
-- members' ids and final states, in the order they were given.
local function group_fire(ctx, gid, now)
  local base = ctx.base
  local g = base .. 'g:' .. gid
  local f = redis.call('HMGET', g, 'cb', 'fired')
  if f[2] then return end
  redis.call('HSET', g, 'fired', now)
  if ctx.listen then ctx.events[#ctx.events + 1] = event(gid, ctx.queue, 'group_done', now) end
  if f[1] then
    local ck = base .. 't:' .. f[1]
    local h = redis.call('HMGET', ck, 'state', 'pri', 'cbp')
    if h[1] == 'waiting' then
      local ids = redis.call('LRANGE', base .. 'gi:' .. gid, 0, -1)
      local states = {}
      for i = 1, #ids, 4000 do
        local part = redis.call('HMGET', base .. 'go:' .. gid, unpack(ids, i, math.min(i + 3999, #ids)))
        for j = 1, #part do states[#states + 1] = part[j] or 'unknown' end
      end
      local payload = '{"group":"' .. gid .. '","ids":["' .. table.concat(ids, '","') .. '"],"statuses":["' ..
        table.concat(states, '","') .. '"],"payload":' .. (h[3] or 'null') .. '}'
      redis.call('HSET', ck, 'payload', payload, 'npend', 0)
      make_ready(ctx, f[1], ck, h[2], nil, now)
    end
  end
  if ctx.ttl and ctx.ttl > 0 then
    for _, k in ipairs({g, base .. 'gi:' .. gid, base .. 'go:' .. gid}) do redis.call('EXPIRE', k, ctx.ttl) end
  end
end
-- A task reached a final state (done, dead, expired, canceled).  If it is in the queue's hooked set (it
-- has a unique key, a group, a concurrency key or dependents), do what its end sets off, exactly once
-- (the SREM): release its unique key, count it in its group, and release or fail its dependents.  A
-- failed dependent ends too, so this walks the whole chain, iteratively.
-- ctx: {base, queue, listen, events, ttl}; fields: the task's HMGET of uk, grp, hd if the caller has it
local function settle(ctx, id, state, now, fields)
  local base = ctx.base
  local work = {id, state}
  local i = 1
  while i < #work do
    local tid, st = work[i], work[i + 1]
    i = i + 2
    if redis.call('SREM', base .. 'hooked', tid) == 1 then
      local f = (i == 3 and fields) or redis.call('HMGET', base .. 't:' .. tid, 'uk', 'grp', 'hd')
      if f[1] then
        local uk = base .. 'u:' .. f[1]
        if redis.call('GET', uk) == tid then redis.call('DEL', uk) end
      end
      if f[2] and redis.call('HSETNX', base .. 'go:' .. f[2], tid, st) == 1 then
        local g = base .. 'g:' .. f[2]
        if redis.call('HINCRBY', g, 'left', -1) <= 0 and redis.call('HGET', g, 'sealed') == '1' then
          group_fire(ctx, f[2], now)
        end
      end
      local dkey = base .. 'd:' .. tid
      local deps = f[3] and redis.call('SMEMBERS', dkey) or {}  -- hd: a dependent was ever attached
      if #deps > 0 then
        redis.call('DEL', dkey)
        for _, did in ipairs(deps) do
          local dk = base .. 't:' .. did
          local g = redis.call('HMGET', dk, 'state', 'df', 'pri', 'due')
          if g[1] == 'waiting' then
            if st == 'done' or g[2] == 'run' then
              local left = redis.pcall('HINCRBY', dk, 'npend', -1)  -- a malformed npend: no longer waits
              if type(left) ~= 'number' or left <= 0 then make_ready(ctx, did, dk, g[3], g[4], now) end
            else
              local reason = 'dependency ' .. tid .. ' ended ' .. st
              redis.call('HSET', dk, 'state', 'dead', 'fin', now, 'dead', now, 'reason', reason, 'error', reason)
              redis.call('PERSIST', dk)
              redis.call('ZADD', base .. 'dead', now, did)
              if ctx.listen then
                ctx.events[#ctx.events + 1] = event(did, ctx.queue, 'dead', now, ',"reason":' .. cjson.encode(reason))
              end
              work[#work + 1] = did
              work[#work + 1] = 'dead'
            end
          end
        end
      end
    end
  end
end
"""

# KEYS[1] -> xq:{Q}:ready:P, the ready list of the task's priority
# KEYS[2] -> xq:{Q}:wake
# KEYS[3] -> xq:{Q}:sched
# ARGV[1] -> task key prefix xq:{Q}:t:
# ARGV[2] -> task name
# ARGV[3] -> priority (0..9)
# ARGV[4] -> max_retries, or '' for the default (3), which is then not stored
# ARGV[5] -> delay ms before the task is due, or ''
# ARGV[6] -> absolute due time (unix ms, the producer's clock), or ''
# ARGV[7] -> expires: ms from now, or ''
# ARGV[8] -> expires: absolute unix ms, or ''
# ARGV[9] -> processing timeout ms, or ''
# ARGV[10] -> events channel
# ARGV[11] -> queue name
# ARGV[12] -> flow options, JSON, or '' for none (see xq/flow.py): uk (unique key), ut (its TTL ms),
#             ck/cm (concurrency key, max concurrency), rk/rn/rp (rate key, starts, period ms), deps (ids
#             of this queue the tasks wait for), df ('run': run even if a dependency fails), grp (group id),
#             rt (the tasks' own result ttl, seconds: kept as 'rttl', exempt from the count cut of retain())
# ARGV[13..] -> per task, 3 values: id, payload, ct ('j' JSON, 'b' raw bytes); ct 'j+' / 'b+' says the
#             payload was staged (payload ''): a hash xq:{Q}:s:<id> whose field 'payload' holds it, written
#             by plain commands sent just before this script (MULTI, HSET and PEXPIRE of STAGE_TTL_MS
#             for each, EXEC; the expiry only matters if the script never runs).  The script RENAMEs it to
#             the task's key, so a large payload never enters Lua (a string entering a script is hashed
#             byte by byte and copied: ~15 ms of Redis for 4 MB); a stage of an id that has a record
#             already is deleted
# Output: the number of tasks enqueued (ids that have a record already are skipped, so a call resent after a
#         lost reply enqueues nothing twice); or, when the unique key is held, the id of the task holding it (a
#         bulk string; nothing is enqueued); or an error reply 'XQ ...' naming an unknown dependency, a
#         group that is not open, or a staged payload that is gone (expired or evicted).  A call that
#         enqueues nothing deletes its stages, and nothing is written before these checks pass
# The record holds only what is not implied, since every field costs Redis time at 200k+ tasks/s: the
# queue is in the key, a missing att is 0, a missing maxr the default, a missing ct 'j', and the enqueue
# time is the first 48 bits of an xq id (foreign producers may set 'enq' instead).
# A due time not after now makes the task ready at once.  A scheduled task earlier than every other one
# sets the wake marker, so an idle supervisor wakes and shortens its sleep to the new earliest due time.
ENQUEUE = _PRELUDE + """
local prefix, name, pri, maxr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local due, exp, timeout, now = nil, nil, ARGV[9], nil
if ARGV[5] ~= '' or ARGV[6] ~= '' or ARGV[7] ~= '' then now = now_ms() end
if ARGV[5] ~= '' then due = now + tonumber(ARGV[5]) elseif ARGV[6] ~= '' then due = tonumber(ARGV[6]) end
if due and due <= now then due = nil end
if ARGV[7] ~= '' then exp = now + tonumber(ARGV[7]) elseif ARGV[8] ~= '' then exp = ARGV[8] end
local state = due and 'scheduled' or 'queued'
local flow, extra, pending, born_dead, hooked, uk_taken = nil, {}, {}, nil, false, nil
local base = base_of(prefix)
local stages = {}  -- ARGV index of a staged payload's id -> its stage key
for i = 13, #ARGV, 3 do
  if #ARGV[i + 2] > 1 then stages[i] = base .. 's:' .. ARGV[i] end
end
local function refuse(reply)  -- nothing enqueued: the stages go too
  for _, stage in pairs(stages) do redis.call('DEL', stage) end
  return reply
end
for i, stage in pairs(stages) do
  if redis.call('EXISTS', stage) == 0 and redis.call('EXISTS', prefix .. ARGV[i]) == 0 then
    return refuse(redis.error_reply('XQ staged payload of task ' .. ARGV[i] .. ' in queue ' .. ARGV[11] ..
      ' is gone (expired or evicted before this ENQUEUE ran): nothing was stored; send it again'))
  end
end
if ARGV[12] ~= '' then
  flow = cjson.decode(ARGV[12])
  for _, d in ipairs(flow.deps or {}) do  -- checked before anything is written
    local st = redis.call('HGET', prefix .. d, 'state')
    if not st then return refuse(redis.error_reply('XQ unknown dependency ' .. d .. ' in queue ' .. ARGV[11])) end
    if st ~= 'done' and st ~= 'dead' and st ~= 'expired' and st ~= 'canceled' then
      pending[#pending + 1] = d
    elseif st ~= 'done' and flow.df ~= 'run' and not born_dead then
      born_dead = 'dependency ' .. d .. ' ended ' .. st
    end
  end
  if flow.grp and redis.call('HGET', base .. 'g:' .. flow.grp, 'sealed') ~= '0' then
    return refuse(redis.error_reply('XQ group ' .. flow.grp .. ' is not open in queue ' .. ARGV[11]))
  end
  if flow.uk then
    local uk = base .. 'u:' .. flow.uk
    local ok
    if flow.ut then ok = redis.call('SET', uk, ARGV[13], 'NX', 'PX', flow.ut) else ok = redis.call('SET', uk, ARGV[13], 'NX') end
    if not ok then return refuse(redis.call('GET', uk)) end
    uk_taken = uk
    extra[#extra + 1], extra[#extra + 2] = 'uk', flow.uk
  end
  if flow.ck or flow.rk then
    extra[#extra + 1], extra[#extra + 2] = 'lim', cjson.encode({ck = flow.ck, cm = flow.cm, rk = flow.rk, rn = flow.rn, rp = flow.rp})
  end
  if flow.grp then extra[#extra + 1], extra[#extra + 2] = 'grp', flow.grp end
  if flow.rt then extra[#extra + 1], extra[#extra + 2] = 'rttl', flow.rt end  -- its own result ttl, seconds
  if flow.deps and #flow.deps > 0 then
    extra[#extra + 1], extra[#extra + 2] = 'deps', cjson.encode(flow.deps)
    if flow.df then extra[#extra + 1], extra[#extra + 2] = 'df', flow.df end
  end
  if born_dead then
    state = 'dead'
    now = now or now_ms()
    for _, v in ipairs({'reason', born_dead, 'error', born_dead, 'dead', now, 'fin', now}) do extra[#extra + 1] = v end
  elseif #pending > 0 then
    state = 'waiting'
    extra[#extra + 1], extra[#extra + 2] = 'npend', #pending
  end
  hooked = flow.uk or flow.ck or flow.grp or born_dead
end
local ids, sched = {}, {}
for i = 13, #ARGV, 3 do
  local key, ct, stage = prefix .. ARGV[i], ARGV[i + 2], stages[i]
  if stage then ct = string.sub(ct, 1, 1) end
  -- An id that has a record already was stored by an earlier send of this same call (its reply was lost
  -- to a cut connection): skipping it makes the producer's retry safe.
  if redis.call('EXISTS', key) == 0 then
    if stage then
      redis.call('RENAME', stage, key)  -- O(1): the payload's bytes stay where they are
      redis.call('PERSIST', key)
      redis.call('HSET', key, 'name', name, 'state', state, 'pri', pri)
    else
      redis.call('HSET', key, 'name', name, 'payload', ARGV[i + 1], 'state', state, 'pri', pri)
    end
    if ct ~= 'j' then redis.call('HSET', key, 'ct', ct) end
    if maxr ~= '' then redis.call('HSET', key, 'maxr', maxr) end
    if exp then redis.call('HSET', key, 'exp', exp) end
    if timeout ~= '' then redis.call('HSET', key, 'to', timeout) end
    if #extra > 0 then redis.call('HSET', key, unpack(extra)) end
    if due then
      redis.call('HSET', key, 'due', due)
      sched[#sched + 1] = due
      sched[#sched + 1] = ARGV[i]
    end
    ids[#ids + 1] = ARGV[i]
  elseif stage then
    redis.call('DEL', stage)
  end
end
if #ids == 0 then
  -- a resend whose tasks exist already: the unique key it just took would be held by nobody live
  if uk_taken then redis.call('DEL', uk_taken) end
  return 0
end
if hooked then push_chunks('SADD', base .. 'hooked', ids) end
if flow and flow.grp then
  redis.call('HINCRBY', base .. 'g:' .. flow.grp, 'left', #ids)
  push_chunks('RPUSH', base .. 'gi:' .. flow.grp, ids)
end
for _, d in ipairs(pending) do
  push_chunks('SADD', base .. 'd:' .. d, ids)
  redis.call('SADD', base .. 'hooked', d)
  redis.call('HSET', prefix .. d, 'hd', 1)
end
if state == 'dead' then
  local ctx = {base = base, queue = ARGV[11], listen = listening(ARGV[10]), events = {}}
  for _, id in ipairs(ids) do
    redis.call('ZADD', base .. 'dead', now, id)
    if ctx.listen then  -- before what its death sets off (a group's callback, say)
      ctx.events[#ctx.events + 1] = event(id, ARGV[11], 'dead', now, ',"reason":' .. cjson.encode(born_dead))
    end
    settle(ctx, id, 'dead', now)
  end
  retain(base, now, nil, {})
  publish(ARGV[10], ctx.events)
  return #ids
end
if state == 'waiting' then
  if listening(ARGV[10]) then
    local events, ts = {}, now or now_ms()
    for _, id in ipairs(ids) do events[#events + 1] = event(id, ARGV[11], 'waiting', ts) end
    publish(ARGV[10], events)
  end
  return #ids
end
if due then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  push_chunks('ZADD', KEYS[3], sched)
  if not first[2] or tonumber(first[2]) > due then redis.call('ZADD', KEYS[2], 0, '1') end
else
  push_chunks('RPUSH', KEYS[1], ids)
  redis.call('ZADD', KEYS[2], 0, '1')
end
if listening(ARGV[10]) then
  local events, ts = {}, now or now_ms()
  local extra = due and (',"next":' .. due) or ''
  for _, id in ipairs(ids) do events[#events + 1] = event(id, ARGV[11], state, ts, extra) end
  publish(ARGV[10], events)
end
return #ids
"""

# KEYS -> for each queue in priority order, 14 keys: ready:0 .. ready:9, wake, leases, sched, dead
# ARGV[1] -> max tasks to claim in all (0: only move due scheduled/retrying tasks to their ready lists)
# ARGV[2] -> worker id
# ARGV[3] -> lease duration, ms
# ARGV[4] -> max payload bytes: a larger payload kills its task (dead) instead of being handed out
# ARGV[5] -> result ttl, seconds (0 keeps records forever), for records this script finishes
# ARGV[6] -> level weights: 10 comma-separated integers for levels 0..9, or '' (strict level order)
# ARGV[7] -> rate limits by task name, JSON {name: [starts, period ms]}, or '' for none
# ARGV[8] -> '1': read each payload's size first and leave a large one out (see below); '' reads payloads
#            with the rest of the record, one command less a task, for queues of small payloads
# ARGV[9..] -> for each queue, 4 values: task key prefix, events channel, queue name, weight ('' = strict)
# Output: {tasks, notes, leased, earliest, now, fetch, large}: tasks is flat, 7 values a task: queue index
#         (0-based), id, name, payload, ct, attempt, timeout ms ('' if none); with ARGV[8] = '1' a payload
#         over INLINE_PAYLOAD bytes is left out (''), and its task's position in tasks (0-based) is listed
#         in fetch, for the caller to read with a plain HGET: a string entering Lua is hashed byte by byte
#         (Redis hashes all of it), so a 55 KB payload would cost Redis ~100 us in and out of the script;
#         large counts the payloads over INLINE_PAYLOAD returned inline (ARGV[8] = ''): the caller should
#         ask for sizes next time; notes is flat, 2 values a skipped id: id,
#         reason (for the supervisor's log); leased is the number of leases held on these queues by anyone
#         after this claim (burst mode waits for 0); earliest is the due time (ms) of the first scheduled or
#         retrying task left in these queues, -1 if none; now is the script's time (ms), so the caller can
#         turn earliest into a local deadline without trusting its own clock against Redis'.
# Order: due tasks move first (at most 1000 per queue per call; earliest then says more are due), so they
# can be claimed in the same call.  Strict mode takes the highest non-empty level of the first non-empty
# queue first.  With level weights, a queue's share first goes to its non-empty levels in proportion to
# their weights, then strictly by level.  With weights, each queue first gets its share of the batch by
# weight (see shares()), then what is left is filled in queue order, so no queue starves while another
# has a backlog, even when every claim is of one task.
# Paused queues: a queue whose key xq:{Q}:paused exists (Producer.pause_queue) is skipped: no task is
# claimed from it and its due scheduled/retrying tasks stay in sched until it is resumed; it adds no
# weight, re-sets no wake marker and reports no earliest time, so idle and burst supervisors treat it as
# holding nothing claimable.  Its leases still count in leased (running tasks finish).
# Limits: a task over its concurrency key's limit is parked in that key's list (cw) and does not count
# towards the batch, so the claim goes on with the tasks behind it; a slot's release moves it back.  A task
# over a rate limit is scheduled for the earliest instant it may start (see rate_earliest: at most `starts`
# in any window of the period, a burst spread over successive instants), so it is neither failed nor
# claimed again before then.
# A claimed task's payload larger than this is not read by CLAIM: the supervisor reads it with HGET.
INLINE_PAYLOAD = 4096
# A payload larger than this is staged by the producer (ENQUEUE, ARGV[13..]): it does not enter Lua.
STAGE_PAYLOAD = INLINE_PAYLOAD
STAGE_TTL_MS = 60_000  # a stage the script never consumes (the producer died mid-send) expires
CLAIM = _PRELUDE + """
local now = now_ms()
local want = tonumber(ARGV[1])
local worker = ARGV[2]
local deadline = now + tonumber(ARGV[3])
local maxp = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local out, notes, leased, earliest, fetch, large = {}, {}, 0, -1, {}, 0
local sizes = ARGV[8] == '1'
local INLINE_PAYLOAD = """ + str(INLINE_PAYLOAD) + """
local nq = (#ARGV - 8) / 4
local name_limits = ARGV[7] ~= '' and cjson.decode(ARGV[7]) or nil
local level_weights = nil
if ARGV[6] ~= '' then
  level_weights = {}
  for w in string.gmatch(ARGV[6], '%d+') do level_weights[#level_weights + 1] = tonumber(w) end
end
-- A record that breaks a limit of docs/protocol.md (or lacks name, payload or state) fails alone: dead,
-- its reason naming the field.  (The supervisor checks the fields it uses itself: id, name, ct, to.)
local function fail_invalid(c, id, key, f, why)
  local h = redis.call('HMGET', key, 'att', 'maxr', 'worker', 'hist')
  local a = tonumber(f[5])
  if not is_int(a, 0, 65534) then a = 0 end
  h[1] = a + 1
  redis.call('HSET', key, 'att', h[1])
  local ev = attempt_failed(key, id, c.queue, now, KEYS[c.base + 13], KEYS[c.base + 14],
                            h, now, now, 'invalid', 'invalid record: ' .. why, -1, 'invalid record: ' .. why)
  if c.listen then c.events[#c.events + 1] = ev end
  settle(c.ctx, id, 'dead', now)
  c.finals = true
end
local KNOWN_STATES = {scheduled = true, queued = true, waiting = true, running = true, retrying = true, done = true,
                      dead = true, expired = true, canceled = true}
local qs = {}
local total_weight = 0
for q = 1, nq do
  local a = 5 + q * 4
  local c = {base = (q - 1) * 14, prefix = ARGV[a], channel = ARGV[a + 1], queue = ARGV[a + 2],
             weight = tonumber(ARGV[a + 3]), leases = {}, events = {}, first = 1, expired = {}, canceled = {},
             finals = false}
  c.listen = listening(c.channel)
  c.ctx = {base = base_of(c.prefix), queue = c.queue, listen = c.listen, events = c.events, ttl = ttl}
  qs[q] = c
  -- a paused queue (its `paused` key exists) is skipped: nothing is claimed from it, its due scheduled and
  -- retrying tasks stay in sched, and it neither re-sets its wake marker nor reports an earliest time
  c.paused = redis.call('EXISTS', c.ctx.base .. 'paused') == 1
  if c.weight and not c.paused then total_weight = total_weight + c.weight end
  -- due scheduled and retrying tasks go to the tail of their ready lists
  local sched = KEYS[c.base + 13]
  local due = c.paused and {} or redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    for _, id in ipairs(due) do
      local key = c.prefix .. id
      local f = redis.call('HMGET', key, 'state', 'pri')
      if f[1] == 'scheduled' or f[1] == 'retrying' then
        redis.call('HSET', key, 'state', 'queued')
        redis.call('RPUSH', KEYS[c.base + 1 + prio(f[2])], id)
        if c.listen then c.events[#c.events + 1] = event(id, c.queue, 'queued', now) end
      elseif not KNOWN_STATES[f[1] or ''] and redis.call('EXISTS', key) == 1 then
        local why = f[1] and ('field state: ' .. cjson.encode(string.sub(f[1], 1, 40)) .. ' is not a task state')
                    or 'field state is missing'
        fail_invalid(c, id, key, {nil, nil, nil, nil, redis.call('HGET', key, 'att')}, why)
      end
    end
    redis.call('ZREM', sched, unpack(due))
  end
end

-- Rate limits are sliding logs, exact across supervisors: a limit of n starts per p ms has a log zset
-- (`rl:<key>` / `rnl:<name>`: member id:attempt -> start instant, ms; trimmed to the last p ms) and a plan
-- zset (`rp:<key>` / `rnp:<name>`: deferred id -> the instant first promised to it, which is also its place
-- in line; removed when it starts, trimmed after 10 p; the key outlives its last promise by 10-20 p).  A
-- start at `now` is allowed when the starts in (now - p, now], plus the promises in that window ahead of
-- the task's own (all of them, for a task not deferred yet), are fewer than n; every start is logged, so
-- no window of p ms ever holds more than n.
-- Returns now if the start is allowed (unless `append`), else the earliest instant the task may start: a
-- task not deferred yet goes after every promise already made (the n-th latest start or promise, plus p;
-- a burst is spread one ms apart); a deferred task that finds the window still full (the starts before it
-- were claimed late) keeps its place in line and waits for the instant the n-th latest start or earlier
-- promise leaves the window.
-- Within one call `now` is fixed, so each limit is trimmed once, and what a task not yet deferred needs (is
-- the window full, the n latest starts and promises) is kept in `rate_memo`, per limit, and updated as
-- starts and promises are added: deferring a backlog costs a few commands a task, not a scan.
local rate_memo = {}
local function memo_add(m, t, n)
  if not m or not m.ev then return end
  local ev = m.ev
  local i = #ev + 1
  while i > 1 and ev[i - 1] < t do ev[i] = ev[i - 1]; i = i - 1 end
  ev[i] = t
  if #ev > n then ev[#ev] = nil end
end
local function rate_earliest(r, id, append)
  local log, plan, n, p = r[1], r[2], r[3], r[4]
  local m = rate_memo[log]
  if not m then
    m = {}
    rate_memo[log] = m
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - p)
    redis.call('ZREMRANGEBYSCORE', plan, '-inf', now - 10 * p)
  end
  if m.n ~= n or m.p ~= p then  -- tasks that give one key different limits: start over for each
    m.n, m.p, m.ev, m.full = n, p, nil, nil
  end
  r[6] = m
  local s = redis.call('ZSCORE', plan, id)
  local before = s and ('(' .. s) or '+inf'  -- the promises ahead of this task
  if not append and not (not s and m.full) then
    local lo = '(' .. (now - p)
    local used = redis.call('ZCOUNT', log, lo, now)
    if not s or tonumber(s) > now - p then
      used = used + redis.call('ZCOUNT', plan, lo, s and before or now)
    end
    if used < n then return now end
    if not s then m.full = true end
  end
  local ev = not s and m.ev
  if not ev then
    ev = {}
    for _, z in ipairs({{log, '+inf'}, {plan, before}}) do
      local got = redis.call('ZREVRANGEBYSCORE', z[1], z[2], '-inf', 'WITHSCORES', 'LIMIT', 0, n)
      for i = 2, #got, 2 do ev[#ev + 1] = tonumber(got[i]) end
    end
    table.sort(ev, function(a, b) return a > b end)
    while #ev > n do ev[#ev] = nil end
    if not s then m.ev = ev end
  end
  local due = now + 1
  if ev[n] then due = math.max(due, ev[n] + p) end
  if not s and ev[1] and n <= p then due = math.max(due, ev[1] + 1) end
  return due
end

-- A task with limits may start now: take its concurrency slot and log its start under each rate limit
-- (true); else park it (concurrency) or defer it to the earliest instant every rate limit allows (false).
-- Nothing is taken unless every limit allows the start.
local function within_limits(c, id, key, name, L, att)
  local cbase = c.ctx.base
  local slots
  if L.ck then
    slots = cbase .. 'c:' .. L.ck
    -- tokens past their deadline (holders whose lease ran out) are dropped only when they would matter
    if redis.call('ZCARD', slots) >= L.cm and (redis.call('ZREMRANGEBYSCORE', slots, '-inf', now) == 0
                                               or redis.call('ZCARD', slots) >= L.cm) then
      redis.call('RPUSH', cbase .. 'cw:' .. L.ck, id)
      return false
    end
  end
  local rates = {}
  if L.rk then rates[#rates + 1] = {cbase .. 'rl:' .. L.rk, cbase .. 'rp:' .. L.rk, L.rn, L.rp} end
  local nl = name_limits and name_limits[name]
  if nl then rates[#rates + 1] = {cbase .. 'rnl:' .. name, cbase .. 'rnp:' .. name, nl[1], nl[2]} end
  local due = now
  for _, r in ipairs(rates) do
    r[5] = rate_earliest(r, id, false)
    due = math.max(due, r[5])
  end
  if due > now then
    -- deferred by one limit: in a limit that would have let it start now, it goes after that limit's
    -- promises too, so every limit holds at the instant it is deferred to
    for _, r in ipairs(rates) do
      if r[5] == now then due = math.max(due, rate_earliest(r, id, true)) end
    end
    for _, r in ipairs(rates) do
      if redis.call('ZADD', r[2], 'NX', due, id) == 1 then  -- a deferred task keeps its place in line
        memo_add(r[6], due, r[3])
        -- kept 10 to 20 periods past its last promise: set again only every 10 periods of promises
        local keep = due - now + 10 * r[4]
        if (r[6].keep or redis.call('PTTL', r[2])) < keep then
          r[6].keep = keep + 10 * r[4]
          redis.call('PEXPIRE', r[2], r[6].keep)
        end
      end
    end
    redis.call('HSET', key, 'state', 'scheduled', 'due', due)
    redis.call('ZADD', KEYS[c.base + 13], due, id)
    if c.listen then c.events[#c.events + 1] = event(id, c.queue, 'scheduled', now, ',"next":' .. due) end
    return false
  end
  for _, r in ipairs(rates) do
    if redis.call('ZREM', r[2], id) == 1 then r[6].ev = nil end  -- its promise may have been among them
    redis.call('ZADD', r[1], now, id .. ':' .. att)
    redis.call('PEXPIRE', r[1], r[4])
    memo_add(r[6], now, r[3])
    r[6].full = nil
  end
  if slots then redis.call('ZADD', slots, deadline, id) end
  return true
end

-- One popped id: claim it (returns 1), or finish or drop it as its record says (returns 0).
local function claim_one(c, id)
  local base = c.base
  local key = c.prefix .. id
  -- with sizes, the payload enters the script only when it is small (see INLINE_PAYLOAD); f[2] says
  -- whether it exists
  local plen, inline, f = 0, true, nil
  if sizes then
    plen = redis.call('HSTRLEN', key, 'payload')
    inline = plen <= INLINE_PAYLOAD
    f = redis.call('HMGET', key, 'name', inline and 'payload' or 'ct', 'ct', 'state', 'att', 'to', 'exp', 'lim')
    if not inline then f[2] = true end
  else
    f = redis.call('HMGET', key, 'name', 'payload', 'ct', 'state', 'att', 'to', 'exp', 'lim')
    plen = f[2] and #f[2] or 0
  end
  if not f[1] or not f[2] or not f[4] then
    if not f[1] and not f[2] and not f[4] and redis.call('EXISTS', key) == 0 then
      notes[#notes + 1] = id
      notes[#notes + 1] = 'no task record with name and payload at ' .. key .. ': dropped from the queue'
    elseif f[4] and f[4] ~= 'queued' and KNOWN_STATES[f[4]] then
      notes[#notes + 1] = id
      notes[#notes + 1] = 'state is ' .. f[4] .. ', not queued: stale queue entry dropped'
    else
      fail_invalid(c, id, key, f, 'field ' .. ((not f[1] and 'name') or (not f[2] and 'payload') or 'state') .. ' is missing')
    end
    return 0
  elseif f[4] ~= 'queued' then
    if not KNOWN_STATES[f[4]] then
      fail_invalid(c, id, key, f, 'field state: ' .. cjson.encode(string.sub(f[4], 1, 40)) .. ' is not a task state')
    elseif f[4] ~= 'canceled' then  -- a canceled task's entry is left in its list and dropped here
      notes[#notes + 1] = id
      notes[#notes + 1] = 'state is ' .. tostring(f[4]) .. ', not queued: stale queue entry dropped'
    elseif redis.call('HEXISTS', key, 'fin') == 0 then
      -- canceled by a producer's own HSET (docs/protocol.md, "Cancel"): finished here as CANCEL finishes
      -- a queued task, so it expires, is indexed and its dependents, group and unique key are settled
      redis.call('HSET', key, 'fin', now, 'error', 'canceled while queued')
      expire_finished(key, ttl, redis.call('HGET', key, 'rttl'))
      c.canceled[#c.canceled + 1] = id
      c.finals = true
      if c.listen then c.events[#c.events + 1] = event(id, c.queue, 'canceled', now) end
      settle(c.ctx, id, 'canceled', now)
    end
    return 0
  end
  local a0 = 0
  if f[5] then
    a0 = tonumber(f[5])
    if not is_int(a0, 0, 65533) then
      fail_invalid(c, id, key, f, 'field att: ' .. cjson.encode(string.sub(f[5], 1, 40)) .. ' is not an integer 0..65533')
      return 0
    end
  end
  local exp = f[7] and tonumber(f[7])
  if f[7] and not (exp and exp == exp) then
    fail_invalid(c, id, key, f, 'field exp: ' .. cjson.encode(string.sub(f[7], 1, 40)) .. ' is not a time in ms')
    return 0
  end
  local L = {}
  if f[8] then
    local why
    L, why = read_lim(f[8])
    if not L then
      fail_invalid(c, id, key, f, why)
      return 0
    end
  end
  if exp and a0 == 0 and exp <= now then
    -- expiry is a queue wait limit: a task that has started once is retried, never expired
    redis.call('HSET', key, 'state', 'expired', 'fin', now, 'error', 'expired before it started (expires at ' .. f[7] .. ')')
    expire_finished(key, ttl, redis.call('HGET', key, 'rttl'))
    c.expired[#c.expired + 1] = id
    c.finals = true
    if c.listen then c.events[#c.events + 1] = event(id, c.queue, 'expired', now) end
    settle(c.ctx, id, 'expired', now)
  elseif plen > maxp then
    local err = 'PayloadTooLarge: payload of ' .. plen .. ' bytes exceeds max_payload of ' .. maxp .. ' bytes'
    local h = redis.call('HMGET', key, 'att', 'maxr', 'worker', 'hist')
    h[1] = a0 + 1
    redis.call('HSET', key, 'att', h[1])
    local ev = attempt_failed(key, id, c.queue, now, KEYS[base + 13], KEYS[base + 14],
                              h, now, now, 'payload too large', err, -1)
    if c.listen then c.events[#c.events + 1] = ev end
    settle(c.ctx, id, 'dead', now)
    c.finals = true
  elseif (f[8] or (name_limits and name_limits[f[1]])) and not within_limits(c, id, key, f[1], L, a0 + 1) then
    return 0
  else
    local att = a0 + 1
    redis.call('HSET', key, 'state', 'running', 'att', att, 'claimed', now, 'worker', worker)
    c.leases[#c.leases + 1] = deadline
    c.leases[#c.leases + 1] = id
    local m = #out
    out[m + 1] = c.base / 14
    out[m + 2] = id
    out[m + 3] = f[1]
    if inline then
      out[m + 4] = f[2]
      if plen > INLINE_PAYLOAD then large = large + 1 end
    else
      out[m + 4] = ''
      fetch[#fetch + 1] = m
    end
    out[m + 5] = f[3] or 'j'
    out[m + 6] = att
    out[m + 7] = f[6] or ''
    if c.listen then
      c.events[#c.events + 1] = event(id, c.queue, 'running', now, ',"attempt":' .. att .. ',"worker":' .. cjson.encode(worker))
    end
    return 1
  end
  return 0
end

-- Split n in proportion to weights: the floors first, then what they leave over (all of it, in a claim
-- of one task) to one entry picked in proportion to its weight by the claim's time, so that over many
-- claims, however small, each entry gets its share (rounding up for every entry would hand every slot of
-- a small claim to the first one and starve the rest).
local function shares(n, weights)
  local total, given, out = 0, 0, {}
  for _, w in ipairs(weights) do total = total + w end
  for i, w in ipairs(weights) do
    out[i] = math.floor(n * w / total)
    given = given + out[i]
  end
  if given < n then
    local pick = now % total
    for i, w in ipairs(weights) do
      if pick < w then
        out[i] = out[i] + n - given
        break
      end
      pick = pick - w
    end
  end
  return out
end

local function take(c, n)
  local base, taken = c.base, 0
  if c.paused then return 0 end
  if level_weights and n > 0 then
    -- the non-empty levels share n by their weights first
    local nonempty, ws = {}, {}
    for p = 1, 10 do
      if level_weights[p] and level_weights[p] > 0 and redis.call('EXISTS', KEYS[base + p]) == 1 then
        nonempty[#nonempty + 1] = p
        ws[#ws + 1] = level_weights[p]
      end
    end
    local quotas = #ws > 0 and shares(n, ws) or {}
    for i, p in ipairs(nonempty) do
      local quota = math.min(n - taken, quotas[i])
      while quota > 0 do
        local ids = redis.call('LPOP', KEYS[base + p], quota)
        if not ids then break end
        for _, id in ipairs(ids) do
          local got = claim_one(c, id)
          taken, quota = taken + got, quota - got
        end
      end
    end
  end
  -- LMPOP pops from the first non-empty level; the next call starts again at that level (skipped
  -- entries do not count towards n, so it may still hold tasks).
  while n > taken do
    local args = {11 - c.first}
    for p = c.first, 10 do args[#args + 1] = KEYS[base + p] end
    args[#args + 1], args[#args + 2], args[#args + 3] = 'LEFT', 'COUNT', n - taken
    local got = redis.call('LMPOP', unpack(args))
    if not got then break end
    for p = c.first, 10 do
      if KEYS[base + p] == got[1] then c.first = p break end
    end
    for _, id in ipairs(got[2]) do taken = taken + claim_one(c, id) end
  end
  return taken
end

if total_weight > 0 and want > 0 then
  local idx, ws = {}, {}
  for q = 1, nq do
    if qs[q].weight and qs[q].weight > 0 and not qs[q].paused then
      idx[#idx + 1] = q
      ws[#ws + 1] = qs[q].weight
    end
  end
  local quotas = shares(want, ws)
  for i, q in ipairs(idx) do
    if want > 0 then want = want - take(qs[q], math.min(want, quotas[i])) end
  end
end
for q = 1, nq do
  if want <= 0 then break end
  want = want - take(qs[q], want)
end

for q = 1, nq do
  local c = qs[q]
  local base = c.base
  if #c.leases > 0 then push_chunks('ZADD', KEYS[base + 12], c.leases) end
  if c.finals then retain(c.ctx.base, now, ttl, {expired = c.expired, canceled = c.canceled}) end
  publish(c.channel, c.events)
  leased = leased + redis.call('ZCARD', KEYS[base + 12])
  -- Work left behind wakes the next idle supervisor; the one that took the marker may have filled up.
  -- (An empty list does not exist in Redis, so one EXISTS over the ten levels tells.)
  -- (Not for a paused queue: its waiting tasks would wake idle supervisors for nothing, over and over.)
  if not c.paused and redis.call('EXISTS', unpack(KEYS, base + 1, base + 10)) > 0 then
    redis.call('ZADD', KEYS[base + 11], 0, '1')
  end
  local first = c.paused and {} or redis.call('ZRANGE', KEYS[base + 13], 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2])
    if earliest < 0 or t < earliest then earliest = t end
  end
end
return {out, notes, leased, earliest, now, fetch, large}
"""

# KEYS[1] -> xq:{Q}:leases
# KEYS[2] -> xq:{Q}:sched
# KEYS[3] -> xq:{Q}:dead
# KEYS[4] -> xq:{Q}:stn, only while stats history is on: failed attempts are counted (count_failed)
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> result ttl, seconds (0 keeps records forever)
# ARGV[4] -> the event message for the done tasks, built by the caller (published as is when nothing is
#           refused; '' publishes nothing)
# ARGV[5] -> queue name
# ARGV[6] -> worker id of the reporting supervisor
# ARGV[7..] -> per task, 7 values: id, attempt, outcome, text, extra, started ms, finished ms, where
#              outcome/text/extra are done/result/rct ('j' or 'b'), retry/error/'<delay ms>,<max_retries of
#              the task>' (a retryable failure; a max_retries in the record wins), failed/error/'' (not to
#              be retried), canceled/error/''
# Output: {written, refused}: the number of tasks whose outcome was recorded, and per task refused 5 values:
#         id, attempt reported, and the record's state, worker, att now ('' for a missing field)
# Fencing: an outcome is recorded only while the record is 'running' under this worker and this attempt
# (see holds()).  Anything else is a late report of an attempt whose lease was lost: the task was recovered
# and maybe claimed again (by anyone, this worker included) or finished, or its record expired or was
# deleted; writing it would overwrite the newer attempt's state or result, or recreate a dead record.  It
# is refused, and its lease entry is left to the attempt that holds it now (removed only when the record
# is not running, as such an entry is stale).  The check is one HMGET of three fields per task; the
# failure paths read the rest of what they need.  Done tasks with flow control (in the hooked set) are
# found with one EXISTS per call, and one SMISMEMBER only when the queue has any.
COMPLETE = _PRELUDE + """
local prefix, ttl, queue, worker = ARGV[1], tonumber(ARGV[3]), ARGV[5], ARGV[6]
local ids, events, done, refused = {}, {}, {}, {}
local written = 0
local now, listen = nil, nil
local ctx = {base = base_of(prefix), queue = queue, events = events, ttl = ttl}
local grown, final_any = {done = done, canceled = {}}, false
for i = 7, #ARGV, 7 do
  local id, att, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'state', 'worker', 'att', 'rttl')
  if not holds(f, worker, att) then
    refuse(refused, id, att, f)
    if f[1] ~= 'running' then ids[#ids + 1] = id end
  elseif outcome == 'done' then
    if ARGV[i + 4] == 'j' then
      redis.call('HSET', key, 'state', 'done', 'result', ARGV[i + 3], 'started', ARGV[i + 5], 'fin', ARGV[i + 6])
    else
      redis.call('HSET', key, 'state', 'done', 'result', ARGV[i + 3], 'started', ARGV[i + 5], 'fin', ARGV[i + 6],
                 'rct', ARGV[i + 4])
    end
    expire_finished(key, ttl, f[4])
    written = written + 1
    done[#done + 1] = id
    ids[#ids + 1] = id
  else
    local g = redis.call('HMGET', key, 'maxr', 'hist', 'lim')
    local rttl = f[4]
    f = {f[3], g[1], f[2], g[2]}  -- att, maxr, worker, hist: what attempt_failed reads
    now = now or now_ms()
    if listen == nil then listen = listening(ARGV[2]) ctx.listen = listen end
    release_slot(ctx.base, g[3], id, now)
    redis.call('HSET', key, 'started', ARGV[i + 5])
    local ev, final
    if outcome == 'canceled' then
      final = 'canceled'
      add_history(key, f[4], tonumber(f[1]) or 1, f[3], ARGV[i + 5], ARGV[i + 6], 'canceled', ARGV[i + 3])
      redis.call('HSET', key, 'state', 'canceled', 'fin', ARGV[i + 6], 'error', ARGV[i + 3])
      expire_finished(key, ttl, rttl)
      grown.canceled[#grown.canceled + 1] = id
      ev = event(id, queue, 'canceled', now)
    else
      local delay = -1
      if outcome == 'retry' then  -- extra is '<delay ms>,<the task's max_retries>'; the record's own wins
        local d, m = string.match(ARGV[i + 4], '^(%d+),?(%d*)$')
        delay = tonumber(d) or 0
        if not f[2] and m and m ~= '' then  -- record it, so status() shows the limit it runs under
          f[2] = m
          if m ~= '3' then redis.call('HSET', key, 'maxr', m) end
        end
      end
      local due, why, oc = nil, nil, 'failed'
      if outcome == 'invalid' then  -- the supervisor found the record breaking a limit: dead, not retried
        oc, why = 'invalid', 'invalid record: ' .. ARGV[i + 3]
      end
      ev, due = attempt_failed(key, id, queue, now, KEYS[2], KEYS[3], f, ARGV[i + 5], ARGV[i + 6],
                               oc, why or ARGV[i + 3], delay, why)
      if KEYS[4] then count_failed(KEYS[4], key, nil, now, due, ARGV[i + 5], ARGV[i + 6]) end
      if not due then final = 'dead' end
    end
    if listen then events[#events + 1] = ev end
    if final then
      settle(ctx, id, final, now)
      final_any = true
    end
    written = written + 1
    ids[#ids + 1] = id
  end
end
if #done > 0 and redis.call('EXISTS', ctx.base .. 'hooked') == 1 then
  for c = 1, #done, 4000 do
    local part = {unpack(done, c, math.min(c + 3999, #done))}
    local flags = redis.call('SMISMEMBER', ctx.base .. 'hooked', unpack(part))
    for j = 1, #part do
      if flags[j] == 1 then
        now = now or now_ms()
        if listen == nil then listen = listening(ARGV[2]) ctx.listen = listen end
        local f = redis.call('HMGET', prefix .. part[j], 'lim', 'uk', 'grp', 'hd')
        release_slot(ctx.base, f[1], part[j], now)
        settle(ctx, part[j], 'done', now, {f[2], f[3], f[4]})
      end
    end
  end
end
push_chunks('ZREM', KEYS[1], ids)
if #done > 0 or final_any then
  now = now or now_ms()
  retain(ctx.base, now, ttl, grown)
end
if #refused == 0 then
  if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[4]) end
elseif #done > 0 and ARGV[4] ~= '' then
  -- the caller's message names every done task, refused ones too: this rare call builds its own, without
  -- the inline results (a waiter then reads the result from the record)
  now = now or now_ms()
  for _, id in ipairs(done) do events[#events + 1] = event(id, queue, 'done', now) end
end
publish(ARGV[2], events)
return {written, refused}
"""

# KEYS[1] -> xq:{Q}:leases
# KEYS[2] -> xq:{Q}:wake
# KEYS[3] -> xq:{Q}:sched
# KEYS[4] -> xq:{Q}:dead
# KEYS[5..14] -> xq:{Q}:ready:0 .. ready:9
# KEYS[15] -> xq:{Q}:stn, only while stats history is on: lost/expired attempts are counted as failed
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> queue name
# ARGV[4] -> result ttl, seconds
# ARGV[5] -> mode: 'return'   claimed but never started: back to the head of its list, attempt not counted
#                  'lost'     the attempt ended without a result (child died, timed out): retried if
#                             attempts remain (after ARGV[9] ms, or at the head of its list for 0), else dead
#                  'canceled' the attempt was stopped by a cancel request: canceled
#                  'expired'  like lost, for every lease past its deadline (ids are ignored)
#                  'orphans'  like return, for every task leased to ARGV[7] whose id is not in ARGV[12..]
#                             (the ids it holds, one value each): after a claim's reply was lost
# ARGV[6] -> error text recorded for lost/canceled/expired
# ARGV[7] -> worker id that must hold the task (see holds(); 'expired' ignores it)
# ARGV[8] -> the attempt's outcome for its history: 'lost', 'timeout', 'memory', 'canceled'
# ARGV[9] -> retry delay, ms (0 = at once, at the head of its list)
# ARGV[10] -> when the attempt started (ms), or ''
# ARGV[11] -> JSON object: task name -> max_retries, for tasks whose default is not 3 (a record's own wins)
# ARGV[12..] -> per task, 2 values: id, the attempt this worker claimed; in queue order ('expired': none)
# Output: {requeued ids, dead ids, refused}: refused as in COMPLETE (5 values a task), for tasks this
#         worker no longer holds at that attempt: left as they are (a running one's lease entry included)
RELEASE = _PRELUDE + """
local now = now_ms()
local prefix, channel, queue, ttl, mode, err, holder, outcome, delay =
  ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local started = ARGV[10]
local ids, atts = {}, {}
if mode == 'expired' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
elseif mode == 'orphans' then
  -- the holder's leases it does not know of: a claim whose reply was lost leased them to it; they were
  -- never started, so they go back as 'return' does, at once instead of after their lease
  local known = {}
  for i = 12, #ARGV do known[ARGV[i]] = true end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if not known[id] then
      local f = redis.call('HMGET', prefix .. id, 'state', 'worker', 'att')
      if f[1] == 'running' and f[2] == holder then
        ids[#ids + 1] = id
        atts[#ids] = f[3]
      end
    end
  end
  mode = 'return'
else
  for i = 12, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
    atts[#ids] = ARGV[i + 1]
  end
end
local defaults = cjson.decode(ARGV[11])
local listen = listening(channel)
local requeued, dead, events, gone, refused, canceled = {}, {}, {}, {}, {}, {}
local ctx = {base = base_of(prefix), queue = queue, listen = listen, events = events, ttl = ttl}
-- LPUSH reverses, so walk backwards to keep the original order at the head of each list.
for i = #ids, 1, -1 do
  local id = ids[i]
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'state', 'att', 'maxr', 'pri', 'worker', 'hist', 'claimed', 'name', 'cxl', 'lim',
                      'rttl')
  local fence = {f[1], f[5], f[2]}
  if f[1] ~= 'running' then
    gone[#gone + 1] = id  -- a stale lease entry: nothing holds it
    if mode ~= 'expired' then refuse(refused, id, atts[i], fence) end
  elseif mode ~= 'expired' and not holds(fence, holder, atts[i]) then
    refuse(refused, id, atts[i], fence)
  else
    gone[#gone + 1] = id
    release_slot(ctx.base, f[10], id, now)
    local att = tonumber(f[2]) or 1
    local pri = prio(f[4])
    local ev, final
    local m, text = mode, err
    if not f[3] and defaults[f[8] or ''] then
      f[3] = tostring(defaults[f[8]])
      redis.call('HSET', key, 'maxr', f[3])
    end
    if f[9] then  -- its cancellation was requested: whatever happened to the attempt, it ends here
      m = 'canceled'
      if mode ~= 'canceled' then text = 'canceled (requested while it ran; ' .. mode .. ': ' .. err .. ')' end
    end
    if m == 'return' then
      redis.call('HSET', key, 'state', 'queued', 'att', math.max(att - 1, 0))
      redis.call('LPUSH', KEYS[5 + pri], id)
      requeued[#requeued + 1] = id
      ev = event(id, queue, 'queued', now)
    elseif m == 'canceled' then
      add_history(key, f[6], att, f[5], started ~= '' and started or f[7], now, 'canceled', text)
      redis.call('HSET', key, 'state', 'canceled', 'fin', now, 'error', text)
      expire_finished(key, ttl, f[11])
      canceled[#canceled + 1] = id
      ev = event(id, queue, 'canceled', now)
      final = 'canceled'
    else
      local why = err
      if mode == 'expired' then why = 'lease expired (worker ' .. tostring(f[5]) .. ' lost); ' .. err end
      local due
      ev, due = attempt_failed(key, id, queue, now, KEYS[3], KEYS[4], {f[2], f[3], f[5], f[6]},
                               started ~= '' and started or f[7], now, outcome, why, delay)
      if KEYS[15] then count_failed(KEYS[15], key, f[8] or '', now, due, started ~= '' and started or f[7], now) end
      if due then
        if delay <= 0 then  -- at once: straight back to the head of its list
          redis.call('ZREM', KEYS[3], id)
          redis.call('HSET', key, 'state', 'queued')
          redis.call('LPUSH', KEYS[5 + pri], id)
          ev = event(id, queue, 'queued', now)
        end
        requeued[#requeued + 1] = id
      else
        dead[#dead + 1] = id
        final = 'dead'
      end
    end
    if ev and listen then events[#events + 1] = ev end
    if final then settle(ctx, id, final, now) end  -- after its own event: what its end sets off follows
  end
end
push_chunks('ZREM', KEYS[1], gone)
if #canceled > 0 or #dead > 0 then retain(ctx.base, now, ttl, {canceled = canceled}) end
if #requeued > 0 then redis.call('ZADD', KEYS[2], 0, '1') end
publish(channel, events)
return {requeued, dead, refused}
"""

# KEYS[1] -> xq:{Q}:leases
# ARGV[1] -> task key prefix
# ARGV[2] -> worker id
# ARGV[3] -> lease duration, ms
# ARGV[4..] -> per task, 2 values: id, the attempt this worker claimed
# Output: {lost, cancel}: the ids it no longer holds at that attempt (recovered after its lease ran out, and
#         maybe claimed again), and the ids held whose cancellation was requested (in case the control
#         message was missed).  Only leases held at the claimed attempt are extended (see holds()).
RENEW = with_flags(_PRELUDE, "allow-oom") + """  -- ZADD XX: rewrites lease scores in place
local deadline = now_ms() + tonumber(ARGV[3])
local leases, lost, cancel = {}, {}, {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'worker', 'att', 'cxl', 'lim')
  if holds(f, ARGV[2], ARGV[i + 1]) then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    if f[4] then cancel[#cancel + 1] = id end
    if f[5] then  -- a concurrency slot's token lives as long as the lease
      local L = read_lim(f[5])
      if L and L.ck then redis.call('ZADD', base_of(ARGV[1]) .. 'c:' .. L.ck, 'XX', deadline, id) end
    end
  else
    lost[#lost + 1] = id
  end
end
if #leases > 0 then
  for i = 1, #leases, 4000 do
    redis.call('ZADD', KEYS[1], 'XX', unpack(leases, i, math.min(i + 3999, #leases)))
  end
end
return {lost, cancel}
"""

# KEYS[1] -> xq:{Q}:sched
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> control channel
# ARGV[4] -> queue name
# ARGV[5] -> result ttl, seconds
# ARGV[6] -> task id
# Output: {outcome, state before}: outcome 'canceled' (it was queued, scheduled, retrying or waiting: it never runs),
#         'canceling' (it is running: its supervisor was told, see the control channel), 'finished' (it
#         already ended: nothing changed), or 'unknown' (no such record)
# A queued task's id stays in its ready list (removing it would be O(n)); CLAIM drops it.
CANCEL = _PRELUDE + """
local id = ARGV[6]
local key = ARGV[1] .. id
local r = redis.call('HMGET', key, 'state', 'rttl')
local state = r[1]
if not state then return {'unknown', ''} end
local now = now_ms()
if state == 'queued' or state == 'scheduled' or state == 'retrying' or state == 'waiting' then
  redis.call('HSET', key, 'state', 'canceled', 'fin', now, 'error', 'canceled while ' .. state)
  redis.call('ZREM', KEYS[1], id)
  local ttl = tonumber(ARGV[5])
  expire_finished(key, ttl, r[2])
  local ctx = {base = base_of(ARGV[1]), queue = ARGV[4], listen = listening(ARGV[2]), events = {}, ttl = ttl}
  if ctx.listen then ctx.events[1] = event(id, ARGV[4], 'canceled', now) end
  settle(ctx, id, 'canceled', now)
  retain(ctx.base, now, ttl, {canceled = {id}})
  publish(ARGV[2], ctx.events)
  return {'canceled', state}
end
if state == 'running' then
  redis.call('HSET', key, 'cxl', now)
  redis.call('PUBLISH', ARGV[3], id)
  return {'canceling', state}
end
return {'finished', state}
"""

# KEYS[1] -> xq:{Q}:dead
# KEYS[2] -> xq:{Q}:wake
# KEYS[3..12] -> xq:{Q}:ready:0 .. ready:9
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> queue name
# ARGV[4] -> new priority, or '' to keep each task's own
# ARGV[5] -> mode: 'requeue' (back to this queue's ready lists, a fresh retry budget), 'head' (requeue the
#            first ARGV[6] ids of the set: a bulk replay of them all, a bounded chunk a call) or 'remove'
#            (drop from this queue: the caller has enqueued it elsewhere)
# ARGV[6..] -> ids ('head': how many)
# Output: the ids replayed (ids not in the dead-letter set are skipped; an entry whose record is gone or
#         no longer dead is dropped from the set, not replayed; in 'remove' mode such a record is kept)
# A replayed task starts afresh: it gets its full retry budget again, expiry and the last error are
# cleared (its history stays); its unique key, group membership and dependents were settled when it died
# and stay so.  Its attempt number `att` keeps counting (`att0` marks where the budget restarts): the
# fencing token (worker, att) of a claim after the replay never equals one before it, so a report of an
# attempt whose lease was lost before the task died cannot be taken for one of the replayed task's.
REPLAY = _PRELUDE + """
local prefix, channel, queue, pri, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local listen = listening(channel)
local done, events = {}, {}
-- the ids still in the set (one ZMSCORE a chunk): others were replayed, purged or moved meanwhile
local ids = {}
if mode == 'head' then
  ids, mode = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1), 'requeue'
else
  for c = 6, #ARGV, 4000 do
    local part = {unpack(ARGV, c, math.min(c + 3999, #ARGV))}
    local scores = redis.call('ZMSCORE', KEYS[1], unpack(part))
    for j = 1, #part do
      if scores[j] then ids[#ids + 1] = part[j] end
    end
  end
end
if pri == '' then pri = nil end
local lists = {}
for _, id in ipairs(ids) do
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'state', 'pri', 'att', 'lim', 'replays')
  if f[1] ~= 'dead' then
    -- a stale entry (its record gone or not dead): dropped from the set; a live record is not ours to drop
  elseif mode == 'remove' then
    redis.call('DEL', key)
    done[#done + 1] = id
  else
    done[#done + 1] = id
    local p = prio(pri or f[2])
    local a = tonumber(f[3])
    if not is_int(a, 0, 65533) then a = 0 end
    redis.call('HDEL', key, 'fin', 'started', 'claimed', 'dead', 'reason', 'cxl', 'worker', 'exp', 'error')
    -- due: ready from now, which the queue's latency counts from (not from the first enqueue)
    redis.call('HSET', key, 'state', 'queued', 'att', a, 'att0', a, 'pri', p, 'replays', (tonumber(f[5]) or 0) + 1,
               'due', now)
    if f[4] then  -- its concurrency slot is released when it ends
      redis.call('SADD', base_of(ARGV[1]) .. 'hooked', id)
    end
    local l = lists[p]
    if not l then l = {}; lists[p] = l end
    l[#l + 1] = id
    if listen then events[#events + 1] = event(id, queue, 'queued', now) end
  end
end
push_chunks('ZREM', KEYS[1], ids)
for p = 0, 9 do
  if lists[p] then push_chunks('RPUSH', KEYS[3 + p], lists[p]) end
end
if #done > 0 and mode ~= 'remove' then redis.call('ZADD', KEYS[2], 0, '1') end
publish(channel, events)
return done
"""

# KEYS[1] -> xq:{Q}:dead
# ARGV[1] -> task key prefix
# ARGV[2] -> max ids to purge in this call
# Output: the number of dead tasks purged (their records are deleted)
PURGE = with_flags(_PRELUDE, "allow-oom") + """  -- frees memory
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
if #ids > 0 then push_chunks('ZREM', KEYS[1], ids) end
return #ids
"""

# KEYS[1] -> xq:{Q}:cron
# KEYS[2] -> xq:{Q}:ready:P of the task's priority
# KEYS[3] -> xq:{Q}:wake
# ARGV[1] -> periodic entry key (task name and expression)
# ARGV[2] -> the tick (ms, the schedule's clock)
# ARGV[3] -> mode: 'fire' (enqueue the task for this tick unless a tick at or after it was fired) or
#            'init' (record the tick as fired if the entry has no record yet; enqueues nothing)
# ARGV[4] -> task key prefix
# ARGV[5] -> task id
# ARGV[6] -> task name
# ARGV[7] -> payload
# ARGV[8] -> ct
# ARGV[9] -> priority
# ARGV[10] -> events channel
# ARGV[11] -> queue name
# Output: {fired (1/0), the last tick fired before this call (ms) or -1}
CRON = _PRELUDE + """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local tick = tonumber(ARGV[2])
if ARGV[3] == 'init' then
  if last < 0 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
  return {0, last}
end
if last >= tick then return {0, last} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local key = ARGV[4] .. ARGV[5]
redis.call('HSET', key, 'name', ARGV[6], 'payload', ARGV[7], 'state', 'queued', 'pri', ARGV[9], 'cron', ARGV[1])
if ARGV[8] ~= 'j' then redis.call('HSET', key, 'ct', ARGV[8]) end
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], 0, '1')
if listening(ARGV[10]) then publish(ARGV[10], {event(ARGV[5], ARGV[11], 'queued', now_ms())}) end
return {1, last}
"""

# KEYS[1] -> xq:{Q}:g:<group id>, the group's hash: left (members not ended), sealed (0/1), total, cb, fired
# KEYS[2] -> xq:{Q}:t:<callback id>, the callback's record (the group key again when there is no callback)
# ARGV[1] -> mode: 'open' (before the members are enqueued with flow option grp) or 'seal' (after)
# ARGV[2] -> task key prefix
# ARGV[3] -> group id
# ARGV[4] -> callback id, or '' for none
# ARGV[5] -> callback task name
# ARGV[6] -> the callback's own payload, JSON, or '' (it receives {"group", "ids", "statuses", "payload"})
# ARGV[7] -> callback priority
# ARGV[8] -> callback max_retries, or '' for the default
# ARGV[9] -> callback timeout ms, or ''
# ARGV[10] -> events channel
# ARGV[11] -> queue name
# ARGV[12] -> result ttl, seconds: how long the group's keys stay after it finished
# Output: 1, or an error reply 'XQ ...' (the group exists already / is not open / has no members).  Opening
# an open group, or sealing a group sealed with the same callback, is a no-op returning 1: a producer's
# resend after a lost reply.
# Members enqueued between open and seal count themselves in (ENQUEUE); each member's end counts itself
# out once (settle).  The callback is enqueued by whichever comes last, the seal or the last member's end,
# so it runs exactly once; a producer that dies before the seal leaves members that run and a group that
# never fires (the group was never accepted: group() did not return).
GROUP = _PRELUDE + """
local g, gid, now = KEYS[1], ARGV[3], now_ms()
local sealed = redis.call('HGET', g, 'sealed')
if ARGV[1] == 'open' then
  if sealed == '0' then return 1 end  -- opened by an earlier send of this call (its reply was lost)
  if sealed then return redis.error_reply('XQ group ' .. gid .. ' exists already') end
  redis.call('HSET', g, 'left', 0, 'sealed', 0, 'total', 0, 'created', now)
  return 1
end
if sealed == '1' and (redis.call('HGET', g, 'cb') or '') == ARGV[4] then return 1 end  -- sealed by an earlier send
if sealed ~= '0' then return redis.error_reply('XQ group ' .. gid .. ' is not open') end
local base = base_of(ARGV[2])
local total = redis.call('LLEN', base .. 'gi:' .. gid)
if total == 0 then return redis.error_reply('XQ group ' .. gid .. ' has no members') end
redis.call('HSET', g, 'sealed', 1, 'total', total)
local ctx = {base = base, queue = ARGV[11], listen = listening(ARGV[10]), events = {}, ttl = tonumber(ARGV[12])}
if ARGV[4] ~= '' then
  local key = KEYS[2]
  redis.call('HSET', key, 'name', ARGV[5], 'payload', '', 'state', 'waiting', 'pri', ARGV[7], 'grpcb', gid, 'npend', 1)
  if ARGV[6] ~= '' then redis.call('HSET', key, 'cbp', ARGV[6]) end
  if ARGV[8] ~= '' then redis.call('HSET', key, 'maxr', ARGV[8]) end
  if ARGV[9] ~= '' then redis.call('HSET', key, 'to', ARGV[9]) end
  redis.call('HSET', g, 'cb', ARGV[4])
  if ctx.listen then ctx.events[1] = event(ARGV[4], ARGV[11], 'waiting', now) end
end
if tonumber(redis.call('HGET', g, 'left')) <= 0 then group_fire(ctx, gid, now) end
publish(ARGV[10], ctx.events)
return 1
"""

# Read-only, for listings (dead letters, schedules): one page of a sorted set with each task's record, every
# field cut at a size limit, so a page of tasks with 40 MiB payloads does not ship 40 MiB per row.
# KEYS[1] -> the sorted set (xq:{Q}:dead or xq:{Q}:sched)
# ARGV[1] -> task key prefix
# ARGV[2], ARGV[3] -> offset, count
# ARGV[4] -> max bytes of a field's value; a longer one is cut to that and named in the row's 4th item
# ARGV[5..] -> fields left out (e.g. payload, result: a listing does not show them)
# Output: per id, {id, score, {field, value, ...}, {cut field, its full length, ...}, 1 if its record
#         exists else 0 (purged or expired meanwhile)}
PEEK = """#!lua flags=no-writes
local prefix, offset, count, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local skip = {}
for i = 5, #ARGV do skip[ARGV[i]] = true end
local rows = redis.call('ZRANGE', KEYS[1], offset, offset + count - 1, 'WITHSCORES')
local out = {}
for i = 1, #rows, 2 do
  local key = prefix .. rows[i]
  local fields, cut = {}, {}
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if not skip[name] then
      local n = redis.call('HSTRLEN', key, name)
      local v = redis.call('HGET', key, name)
      if n > cap then
        v = string.sub(v, 1, cap)
        cut[#cut + 1] = name
        cut[#cut + 1] = n
      end
      fields[#fields + 1] = name
      fields[#fields + 1] = v
    end
  end
  out[#out + 1] = {rows[i], rows[i + 1], fields, cut, redis.call('EXISTS', key)}
end
return out
"""

# Read-only, for a task page: one task record with its big fields (payload, result) left out when they are
# longer than a cap, so showing a task never ships a 32 MiB payload.
# KEYS[1] -> the task's record
# ARGV[1] -> cap (bytes); ARGV[2..] -> the fields capped (the others come whole, as HGETALL gives them)
# Output: {{field, value, ...}, {left-out field, its length, ...}}
RECORD = """#!lua flags=no-writes
local cap, capped = tonumber(ARGV[1]), {}
for i = 2, #ARGV do capped[ARGV[i]] = true end
local fields, out = {}, {}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local n = capped[name] and redis.call('HSTRLEN', KEYS[1], name) or 0
  if n > cap then
    out[#out + 1] = name
    out[#out + 1] = n
  else
    fields[#fields + 1] = name
    fields[#fields + 1] = redis.call('HGET', KEYS[1], name)
  end
end
return {fields, out}
"""

# ---------------------------------------------------------------- queue stats (inspection, issue 11)
# QSTATS: everything `xq queues` / `xq queue show` shows of one queue, in one round trip; writes nothing.
# KEYS[1..10] -> xq:{Q}:ready:0..9; KEYS[11] sched; KEYS[12] leases; KEYS[13] dead; KEYS[14] paused;
#                KEYS[15] hooked
# ARGV[1] -> task key prefix; ARGV[2] -> the queue's base key (xq:{Q}:); ARGV[3] -> cap: ids looked at per
#            list or set at most (the split of sched by state, the waiting walk, the per-name sample)
# ARGV[4] -> '1' to count per task name (a sample: the first `cap` ids of each list and set)
# Output: {{ready per level 0..9}, sched total, retrying (among the sched ids looked at), sched ids looked
#          at, leases, dead, paused value or false, oldest ready id or false, {its enq or false, its due or
#          false} (when it was enqueued, and when it became due: scheduled, retried, replayed), now (ms,
#          Redis TIME), waiting, 1 if the waiting walk covered every hooked id (and looked at no more
#          than 10 * cap dependents) else 0,
#          {name, {queued, scheduled, retrying, running, waiting, dead}, ...}}
# Waiting tasks have no index of their own: they are found through the hooked set (every unfinished task
# something waits for): the members of each hooked id's d:<id> set and its group's callback.
QSTATS = """#!lua flags=no-writes
local prefix, base, cap, by_name = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names, order = {}, {}
local SLOT = {queued = 1, scheduled = 2, retrying = 3, running = 4, waiting = 5, dead = 6}
local function tally(state, id)
  local n = redis.call('HGET', prefix .. id, 'name') or '?'
  local row = names[n]
  if not row then row = {0, 0, 0, 0, 0, 0}; names[n] = row; order[#order + 1] = n end
  row[SLOT[state]] = row[SLOT[state]] + 1
end
local ready, head, head_enq = {}, false, false
for p = 1, 10 do
  local n = redis.call('LLEN', KEYS[p])
  ready[p] = n
  if n > 0 and not head then
    head = redis.call('LINDEX', KEYS[p], 0)
    local h = redis.call('HMGET', prefix .. head, 'enq', 'due')
    head_enq = {h[1] or false, h[2] or false}
  end
  if by_name and n > 0 then
    for _, id in ipairs(redis.call('LRANGE', KEYS[p], 0, cap - 1)) do tally('queued', id) end
  end
end
local nsched = redis.call('ZCARD', KEYS[11])
local sids = redis.call('ZRANGE', KEYS[11], 0, cap - 1)
local retrying = 0
for _, id in ipairs(sids) do
  local st = redis.call('HGET', prefix .. id, 'state')
  if st == 'retrying' then retrying = retrying + 1 end
  if by_name then tally(st == 'retrying' and 'retrying' or 'scheduled', id) end
end
local nleases, ndead = redis.call('ZCARD', KEYS[12]), redis.call('ZCARD', KEYS[13])
if by_name then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[12], 0, cap - 1)) do tally('running', id) end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[13], 0, cap - 1)) do tally('dead', id) end
end
local paused = redis.call('GET', KEYS[14]) or false
local nhooked = redis.call('SCARD', KEYS[15])
local hooked
if nhooked <= cap then hooked = redis.call('SMEMBERS', KEYS[15])
else hooked = redis.call('SRANDMEMBER', KEYS[15], cap) end
local seen, waiting, budget, whole = {}, 0, cap * 10, nhooked <= cap
local function check(id)
  if seen[id] then return end
  seen[id] = true
  budget = budget - 1
  if redis.call('HGET', prefix .. id, 'state') == 'waiting' then
    waiting = waiting + 1
    if by_name then tally('waiting', id) end
  end
end
for _, h in ipairs(hooked) do
  -- a task with a huge fan-out of dependents: read its d:<id> set in pages, within the budget
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', base .. 'd:' .. h, cursor, 'COUNT', 100)
    cursor = page[1]
    for _, id in ipairs(page[2]) do check(id) end
  until cursor == '0' or budget <= 0
  local grp = redis.call('HGET', prefix .. h, 'grp')
  if grp then
    local cb = redis.call('HGET', base .. 'g:' .. grp, 'cb')
    if cb then check(cb) end
  end
  if budget <= 0 then whole = false; break end
end
local flat = {}
for _, n in ipairs(order) do flat[#flat + 1] = n; flat[#flat + 1] = names[n] end
return {ready, nsched, retrying, #sids, nleases, ndead, paused, head, head_enq, now, waiting,
        whole and 1 or 0, flat}
"""

# ---------------------------------------------------------------- bulk operations (issue 11)
# Replay into another queue moves tasks between two hash slots, which no one script may touch (Redis
# Cluster): DEAD_READ reads a chunk of the source's dead letters, IMPORT writes copies into the target, and
# REPLAY 'remove' then drops the originals, in that order, so a crash between the steps leaves a task in
# both queues, never in neither (docs/design.md, "Bulk operations").  Every call looks at a bounded chunk
# (the caller's, <= 5,000 ids), so Redis is never blocked for long.

# DEAD_READ (read-only): a chunk of a queue's dead letters, as IMPORT takes them.
# KEYS[1] -> xq:{Q}:dead
# ARGV[1] -> task key prefix
# ARGV[2], ARGV[3] -> offset, count: a page of the set, oldest death first (used when no ids follow)
# ARGV[4..] -> ids to read instead of a page (ids not in the set are skipped)
# Output: {tasks, stale, kept, looked}: tasks is flat, 11 values a task (id, name, payload, ct, pri, maxr,
#         to, rttl, hist, att, replays; '' for an absent field); stale: ids whose record is gone or not dead (entries to drop from the
#         set); kept: how many stay (dead, but without a name to enqueue a copy as); looked: ids looked at
DEAD_READ = """#!lua flags=no-writes
local prefix = ARGV[1]
local ids
if #ARGV > 3 then
  ids = {}
  for i = 4, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
else
  local offset = tonumber(ARGV[2])
  ids = redis.call('ZRANGE', KEYS[1], offset, offset + tonumber(ARGV[3]) - 1)
end
local tasks, stale, kept = {}, {}, 0
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', prefix .. id, 'state', 'name', 'payload', 'ct', 'pri', 'maxr', 'to', 'rttl', 'hist',
                       'att', 'replays')
  if f[1] ~= 'dead' then stale[#stale + 1] = id
  elseif not f[2] or f[2] == '' then kept = kept + 1
  else
    local n = #tasks
    tasks[n + 1], tasks[n + 2], tasks[n + 3], tasks[n + 4] = id, f[2], f[3] or 'null', f[4] or 'j'
    tasks[n + 5], tasks[n + 6], tasks[n + 7], tasks[n + 8] = f[5] or '', f[6] or '', f[7] or '', f[8] or ''
    tasks[n + 9], tasks[n + 10], tasks[n + 11] = f[9] or '', f[10] or '', f[11] or ''
  end
end
return {tasks, stale, kept, #ids}
"""

# IMPORT: copies of tasks read from another queue (replay to_queue) queued afresh here, as REPLAY requeues
# in place: a full retry budget, their name, payload, content type, priority, max_retries, timeout, own
# result ttl and attempt history; the attempt number goes on (att0 = att: where the budget restarts) and
# the replay count goes up by one.  No flow options (a unique key, group or dependents belong to the source
# queue and were settled when the task died).
# KEYS[1] -> xq:{T}:wake
# KEYS[2..11] -> xq:{T}:ready:0 .. ready:9
# ARGV[1] -> the target's task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> queue name
# ARGV[4] -> priority for every task, or '' to keep each one's own (else 5)
# ARGV[5..] -> per task, 11 values as DEAD_READ gives them: id, name, payload, ct, pri, maxr, to, rttl, hist,
#              att, replays
# Output: the number of copies written.  An id that has a record here already is skipped: a copy written by
#         an earlier run of a move that stopped before removing the originals, so a move may be run again.
IMPORT = _PRELUDE + """
local prefix = ARGV[1]
local lists, written, events = {}, 0, {}
local listen = listening(ARGV[2])
local now = now_ms()
for i = 5, #ARGV, 11 do
  local id = ARGV[i]
  local key = prefix .. id
  if redis.call('EXISTS', key) == 0 then
    local p = prio(ARGV[4] ~= '' and ARGV[4] or ARGV[i + 4])
    local h = {'name', ARGV[i + 1], 'payload', ARGV[i + 2], 'state', 'queued', 'pri', p, 'due', now}
    if ARGV[i + 3] ~= 'j' then h[#h + 1], h[#h + 2] = 'ct', ARGV[i + 3] end
    local m = tonumber(ARGV[i + 5])
    if is_int(m, 0, 1000) then h[#h + 1], h[#h + 2] = 'maxr', m end
    local t = tonumber(ARGV[i + 6])
    if is_int(t, 1, 99999999999999) then h[#h + 1], h[#h + 2] = 'to', t end
    local rt = tonumber(ARGV[i + 7])
    if is_int(rt, 1, 99999999999999) then h[#h + 1], h[#h + 2] = 'rttl', rt end
    if ARGV[i + 8] ~= '' then h[#h + 1], h[#h + 2] = 'hist', ARGV[i + 8] end
    local a = tonumber(ARGV[i + 9])
    if not is_int(a, 0, 65533) then a = 0 end
    h[#h + 1], h[#h + 2], h[#h + 3], h[#h + 4] = 'att', a, 'att0', a
    h[#h + 1], h[#h + 2] = 'replays', (tonumber(ARGV[i + 10]) or 0) + 1
    redis.call('HSET', key, unpack(h))
    local l = lists[p]
    if not l then l = {}; lists[p] = l end
    l[#l + 1] = id
    written = written + 1
    if listen then events[#events + 1] = event(id, ARGV[3], 'queued', now) end
  end
end
for p = 0, 9 do
  if lists[p] then push_chunks('RPUSH', KEYS[2 + p], lists[p]) end
end
if written > 0 then redis.call('ZADD', KEYS[1], 0, '1') end
publish(ARGV[2], events)
return written
"""

# FLUSH: delete a chunk of a queue's tasks in one state.  Each ends as 'flushed' for what its end sets off
# (settle: its unique key is released, its group counts it out, its dependents die unless they run on
# failure), then its record is deleted.  Running tasks are never flushed (cancel them); dead ones are
# purged by PURGE.  allow-oom: an operator flushes to free memory, and the writes (dependents' deaths) are few.
# KEYS[1..10] -> xq:{Q}:ready:0 .. ready:9
# KEYS[11] -> xq:{Q}:sched
# ARGV[1] -> task key prefix
# ARGV[2] -> events channel
# ARGV[3] -> queue name
# ARGV[4] -> state: 'queued' (pops the ready lists, level 0 first) or 'scheduled' / 'retrying' (a ZSCAN
#            step over sched: every entry there from the first call to the last is looked at once or more)
# ARGV[5] -> max ids looked at in this call
# ARGV[6] -> ZSCAN cursor ('0' to start; scheduled/retrying only)
# ARGV[7] -> result ttl, seconds, for a group that finishes here
# Output: {deleted, looked, cursor}: cursor '0' once done (queued: once a call found the lists empty)
# A popped id whose record is not queued (a canceled task's entry, which CLAIM would drop) is dropped; a
# sched entry in another state is left.
FLUSH = with_flags(_PRELUDE, "allow-oom") + """  -- frees memory
local prefix, state, max = ARGV[1], ARGV[4], tonumber(ARGV[5])
local ctx = {base = base_of(prefix), queue = ARGV[3], listen = listening(ARGV[2]), events = {},
             ttl = tonumber(ARGV[7])}
local now = now_ms()
local deleted, looked, cursor = 0, 0, '0'
local function flush(id)
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'state', 'uk', 'grp', 'hd')
  if f[1] ~= state then return false end
  settle(ctx, id, 'flushed', now, {f[2], f[3], f[4]})
  redis.call('DEL', key)
  deleted = deleted + 1
  return true
end
if state == 'queued' then
  for p = 1, 10 do
    if looked >= max then break end
    local ids = redis.call('LPOP', KEYS[p], max - looked)
    if ids then
      looked = looked + #ids
      for _, id in ipairs(ids) do flush(id) end
    end
  end
  if looked > 0 then cursor = '1' end
else
  local page = redis.call('ZSCAN', KEYS[11], ARGV[6], 'COUNT', max)
  cursor = page[1]
  local gone = {}
  for i = 1, #page[2], 2 do
    looked = looked + 1
    if flush(page[2][i]) then gone[#gone + 1] = page[2][i] end
  end
  if #gone > 0 then push_chunks('ZREM', KEYS[11], gone) end
end
publish(ARGV[2], ctx.events)
return {deleted, looked, cursor}
"""

ALL = {"enqueue": ENQUEUE, "claim": CLAIM, "complete": COMPLETE, "release": RELEASE, "renew": RENEW,
       "cancel": CANCEL, "replay": REPLAY, "purge": PURGE, "cron": CRON,
       "group": GROUP, "peek": PEEK, "record": RECORD, "qstats": QSTATS,
       "dead_read": DEAD_READ, "import": IMPORT, "flush": FLUSH}

# The SHA1 each script is run by (EVALSHA); both brokers, sync and asyncio, use these.
SHA = {name: hashlib.sha1(src.encode()).hexdigest().encode() for name, src in ALL.items()}
