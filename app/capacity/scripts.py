"""The Lua scripts that move seats, and typed wrappers that turn their answers into domain errors.

Each script touches keys of one hash tag only (one office, or one citizen), so the same
script runs unchanged on a single Redis and on Redis Cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from app.redis import AutoPipeline

# A cap (a crowd cap, a restriction) limits the bookings of a whole day, not of each slot:
# a 50% cap on an office with one seat a slot leaves it half its day, not nothing. Every
# script that gives seats asks this first; each slot also keeps its own seat count.
_ROOM = """
-- The seats the day's cap still lets the pool sell, and how many it lets it sell in all.
local function day_room(day, pool, cap)
  if cap >= 100 then return math.huge, math.huge end
  local seats_prefix, used_prefix = 's|' .. pool .. '|', 'u|' .. pool .. '|'
  local seats, used = 0, 0
  local fields = redis.call('HGETALL', day)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if string.sub(field, 1, #seats_prefix) == seats_prefix then seats = seats + tonumber(fields[i + 1])
    elseif string.sub(field, 1, #used_prefix) == used_prefix then used = used + tonumber(fields[i + 1]) end
  end
  local allowed = math.floor(seats * cap / 100)
  return allowed - used, allowed
end
"""

# Kept in the day hash beside the counters, for finding the earliest free slot without
# looking at every slot (a busy day has hundreds, most of them full):
# - 't|pool': the pool's slot times, sorted and joined, five characters each ("08:00,08:30"),
#   made by the first booking that needs them; a new plan (REPLAN) drops them;
# - 'c|pool': a slot time before which no slot of the pool has a seat of its own left (or
#   has started, today), moved on by RESERVE, moved back by RELEASE, dropped by REPLAN.
_SLOT_TIMES = """
local function slot_times(day, pool)
  local field = 't|' .. pool
  local list = redis.call('HGET', day, field)
  if list then return list end
  local prefix = 's|' .. pool .. '|'
  local times = {}
  for _, name in ipairs(redis.call('HKEYS', day)) do
    if string.sub(name, 1, #prefix) == prefix then
      local time = string.sub(name, #prefix + 1)
      if #time ~= 5 then error('slot time is not HH:MM: ' .. name) end
      table.insert(times, time)
    end
  end
  table.sort(times)
  list = table.concat(times, ',')
  redis.call('HSET', day, field, list)
  return list
end
"""

RESERVE = (
    _ROOM
    + _SLOT_TIMES
    + """-- KEYS[1] = the office's day hash (status, cap, seats and used per slot)
-- KEYS[2] = the idempotency key of this request (same hash tag as KEYS[1])
-- KEYS[3] = the day's waitlist for the pool: while anyone is in line, added seats are
--           theirs (the fill that follows a capacity change), so nobody may book past them
-- ARGV[1] = pool ("*" or a service code)
-- ARGV[2] = slot time "HH:MM", or "" for the earliest free slot
-- ARGV[3] = earliest time still bookable "HH:MM" ("" = any): past slots of today are out
-- ARGV[4] = tracking code of this booking
-- ARGV[5] = idempotency TTL in seconds (0 = the request carries no idempotency key)
-- ARGV[6] = "1" for a booking the office moves within its own day: it held a seat here
--           before anyone in line, so the line does not stop it ("" or absent: it does)
-- ARGV[7] = seats of the pool this day's moves give back once they are recorded (the moved
--           booking's own, and those of its batch moved before it), which a cap counts as
--           room ("" or absent: none)
-- Returns {outcome, slot time, tracking code}, and on OK the day's '_count' (which count of
-- the record its counters come from; RELEASE takes it back); outcome is OK, REPLAY, NO_DAY,
-- BLOCKED, CLOSED, NO_SLOT, BEGUN, FULL, DAY_FULL or FORGOTTEN.
local day = KEYS[1]
if redis.call('EXISTS', day) == 0 then return {'NO_DAY', '', ''} end
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  local earlier = redis.call('GET', KEYS[2])
  -- '!' and a tracking code, once for each request with the key answered 503 and forgotten
  -- (FORGET_KEY; the codes are all as long). Run late, each takes nothing; a retry of them
  -- (another tracking code) books.
  if earlier and string.find(earlier, '!' .. ARGV[4], 1, true) then return {'FORGOTTEN', '', ''} end
  if earlier and string.sub(earlier, 1, 1) ~= '!' then return {'REPLAY', '', earlier} end
end
local status = redis.call('HGET', day, '_status')
if status == 'blocked' then return {'BLOCKED', '', ''} end
local cap = tonumber(redis.call('HGET', day, '_cap') or '100')
local pool, wanted, not_before = ARGV[1], ARGV[2], ARGV[3]
-- Under a cap, a day's moves would find it full of the very seats they are about to give back.
local room = day_room(day, pool, cap) + (tonumber(ARGV[7]) or 0)
if ARGV[6] ~= '1' and redis.call('LLEN', KEYS[3]) > 0 then room = 0 end

-- The slot's own seats left (the day's room under its cap aside); nil: no such slot.
local function slot_free(time)
  local seats = tonumber(redis.call('HGET', day, 's|' .. pool .. '|' .. time) or '-1')
  if seats < 0 then return nil end
  return seats - tonumber(redis.call('HGET', day, 'u|' .. pool .. '|' .. time) or '0')
end

local chosen = nil
if wanted ~= '' then
  local free = slot_free(wanted)
  if free == nil then return {'NO_SLOT', wanted, ''} end
  if not_before ~= '' and wanted < not_before then return {'BEGUN', wanted, ''} end
  if math.min(free, room) <= 0 then return {'FULL', wanted, ''} end
  chosen = wanted
else
  local list = slot_times(day, pool)
  local count = math.floor((#list + 1) / 6)
  local function time_at(i) return string.sub(list, 6 * i - 5, 6 * i - 1) end
  if count == 0 then return {'CLOSED', '', ''} end
  if not_before ~= '' and time_at(count) < not_before then return {'OVER', '', ''} end  -- today's last has begun
  if room <= 0 then return {'DAY_FULL', '', ''} end
  local cursor_field = 'c|' .. pool
  local cursor = redis.call('HGET', day, cursor_field) or ''
  local from = cursor
  if not_before > from then from = not_before end
  -- The first slot at or after "from", by halves.
  local low, high = 1, count + 1
  while low < high do
    local middle = math.floor((low + high) / 2)
    if time_at(middle) < from then low = middle + 1 else high = middle end
  end
  for i = low, count do
    local free = slot_free(time_at(i))
    if free ~= nil and free > 0 then chosen = time_at(i) break end
  end
  -- Every slot before the one found is full, or has started: the next booking starts there.
  local moved = chosen or '~'
  if moved ~= cursor then redis.call('HSET', day, cursor_field, moved) end
  if chosen == nil then return {'DAY_FULL', '', ''} end
end
redis.call('HINCRBY', day, 'u|' .. pool .. '|' .. chosen, 1)
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[4], 'EX', ttl) end
return {'OK', chosen, ARGV[4], redis.call('HGET', day, '_count') or ''}
"""
)

# Shared by the scripts that can free or add seats: hand every seat with room under the
# cap to the head of the day's waitlist, earliest slot first, before anyone else can book.
_FILL = (
    _ROOM
    + """
local function fill(day, waitlist, pool, not_before)
  local promoted = {}
  if redis.call('LLEN', waitlist) == 0 then return promoted end
  if redis.call('HGET', day, '_status') == 'blocked' then return promoted end
  local room = day_room(day, pool, tonumber(redis.call('HGET', day, '_cap') or '100'))
  local prefix = 's|' .. pool .. '|'
  local times = {}
  for _, field in ipairs(redis.call('HKEYS', day)) do
    if string.sub(field, 1, #prefix) == prefix then
      local time = string.sub(field, #prefix + 1)
      if not_before == '' or time >= not_before then table.insert(times, time) end
    end
  end
  table.sort(times)
  for _, time in ipairs(times) do
    local seats = tonumber(redis.call('HGET', day, prefix .. time))
    local used_field = 'u|' .. pool .. '|' .. time
    local free = seats - tonumber(redis.call('HGET', day, used_field) or '0')
    while free > 0 and room > 0 do
      local code = redis.call('LPOP', waitlist)
      if not code then return promoted end
      redis.call('HINCRBY', day, used_field, 1)
      table.insert(promoted, code)
      table.insert(promoted, time)
      free, room = free - 1, room - 1
    end
  end
  return promoted
end
"""
)

# Shared by the scripts that give a seat back.
_FREE_SEAT = """
local function free_seat(day, pool, time)
  local field = 'u|' .. pool .. '|' .. time
  local used = tonumber(redis.call('HGET', day, field) or '0')
  if used > 0 then used = redis.call('HINCRBY', day, field, -1) end
  -- A slot a new plan removed lives on with 0 seats only while it still has bookings.
  local seats_field = 's|' .. pool .. '|' .. time
  if used == 0 and redis.call('HGET', day, seats_field) == '0' then
    -- With the pool's list of times (RESERVE's 't|'), built again at the next booking: kept,
    -- it named the gone slot the day's last, and a booking after the real last one was told
    -- "the day is full", not "today's slots are over".
    redis.call('HDEL', day, seats_field, field, 't|' .. pool)
  end
  -- The earliest free slot may be this one again (see RESERVE's cursor).
  local cursor = redis.call('HGET', day, 'c|' .. pool)
  if cursor and time < cursor then redis.call('HSET', day, 'c|' .. pool, time) end
end
"""

RELEASE = (
    _FILL
    + _FREE_SEAT
    + """
-- KEYS[1] = the office's day hash
-- KEYS[2] = the idempotency key to forget (a hash-tagged dummy when none)
-- KEYS[3] = the day's waitlist for this pool (a list of tracking codes, first in line first)
-- ARGV[1] = pool, ARGV[2] = slot time to free ("" frees nothing: only fill from the waitlist)
-- ARGV[3] = earliest time still bookable "HH:MM" ("" = any)
-- ARGV[4] = the day's '_count' the seat is known to be counted in ("" or absent: any): for
--           a seat taken moments ago and never recorded, the one RESERVE gave; for a seat
--           the record just let go of, the one read before that commit. If the day has been
--           counted again from the record since, that count went by the record: freeing the
--           seat would free somebody else's.
-- Frees one seat (never below zero), then gives every seat with room to the waitlist in
-- the same step. Returns {the day's '_count', tracking code, slot time, ...} of the
-- citizens promoted. A missing day (Redis emptied) is left alone, and {} returned: the
-- rebuild counts from the record.
local day = KEYS[1]
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', day) == 0 then return {} end
local count = redis.call('HGET', day, '_count') or ''
local counted_in = ARGV[4] or ''
if ARGV[2] ~= '' and (counted_in == '' or counted_in == count) then free_seat(day, ARGV[1], ARGV[2]) end
local promoted = fill(day, KEYS[3], ARGV[1], ARGV[3])
table.insert(promoted, 1, count)
return promoted
"""
)

UNPROMOTE = (
    _FREE_SEAT
    + """
-- KEYS[1] = the office's day hash, KEYS[2] = the day's waitlist for the pool
-- ARGV[1] = pool, ARGV[2] = slot time, ARGV[3] = the day's '_count' RELEASE gave the seat in
-- ARGV[4] = tracking code of the citizen it was given to ("": a second seat, nobody to put back)
-- A seat RELEASE handed to the head of the line whose promotion could not be recorded
-- (capacity paused for a recount): freed, and the citizen put back at the head of the line,
-- with no fill (handed round, each seat would take the next in line, not recorded either,
-- to the end of it). If the day was counted again since, that count went by the record,
-- where the citizen still waits, and rebuilt the line: there is nothing to undo.
local day = KEYS[1]
if redis.call('EXISTS', day) == 0 then return 0 end
if (redis.call('HGET', day, '_count') or '') ~= ARGV[3] then return 0 end
free_seat(day, ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[4])
  local ttl = redis.call('PTTL', day)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
"""
)

JOIN_WAITLIST = (
    _ROOM
    + """
-- KEYS[1] = the office's day hash, KEYS[2] = the day's waitlist for the pool
-- ARGV[1] = pool, ARGV[2] = earliest time still bookable ("" = any), ARGV[3] = tracking code
-- Joins only when no bookable slot has room: a citizen who can book is told to book.
-- Returns {outcome, position}; outcome is OK, NO_DAY, BLOCKED, CLOSED, OVER (today's slots have
-- all begun) or FREE.
local day, waitlist = KEYS[1], KEYS[2]
if redis.call('EXISTS', day) == 0 then return {'NO_DAY', 0} end
-- In line already (this join run a second time, or a recount that wrote the line from the
-- record after the join's commit): its place, not a second one (each would be given a seat).
local already = redis.call('LPOS', waitlist, ARGV[3])
if already then return {'OK', already + 1} end
if redis.call('HGET', day, '_status') == 'blocked' then return {'BLOCKED', 0} end
local room, allowed = day_room(day, ARGV[1], tonumber(redis.call('HGET', day, '_cap') or '100'))
-- A cap that lets the day sell nothing (a 0% restriction) opens no line: it could never move.
if allowed <= 0 then return {'CLOSED', 0} end
-- As RESERVE: while anyone is in line a free seat is theirs (being given out), not the
-- joiner's to book; told "free", the joiner could neither book nor join.
if redis.call('LLEN', waitlist) > 0 then room = 0 end
local prefix = 's|' .. ARGV[1] .. '|'
local open, begun = 0, 0
for _, field in ipairs(redis.call('HKEYS', day)) do
  if string.sub(field, 1, #prefix) == prefix then
    local time = string.sub(field, #prefix + 1)
    if ARGV[2] ~= '' and time < ARGV[2] then
      if tonumber(redis.call('HGET', day, field)) > 0 then begun = begun + 1 end
    else
      local seats = tonumber(redis.call('HGET', day, field))
      -- A slot cut to no seats (a closure keeps the field where bookings were) opens no line.
      if seats > 0 then open = open + 1 end
      local used = tonumber(redis.call('HGET', day, 'u|' .. ARGV[1] .. '|' .. time) or '0')
      if seats - used > 0 and room > 0 then return {'FREE', 0} end
    end
  end
end
if open == 0 and begun > 0 then return {'OVER', 0} end
if open == 0 then return {'CLOSED', 0} end
local position = redis.call('RPUSH', waitlist, ARGV[3])
local ttl = redis.call('PTTL', day)
if ttl > 0 then redis.call('PEXPIRE', waitlist, ttl) end
return {'OK', position}
"""
)

MATERIALISE = """
-- KEYS[1] = the office's day hash
-- ARGV[1] = "replace" to overwrite, "create" to write only if the day is absent
-- ARGV[2] = unix time the key expires at (the day after the date)
-- ARGV[3..] = field, value pairs (_status, _cap, _count, s|pool|time, u|pool|time)
-- Returns 1 when it wrote, 0 when the day was already there.
local day = KEYS[1]
if ARGV[1] == 'create' and redis.call('EXISTS', day) == 1 then return 0 end
redis.call('DEL', day)
for i = 3, #ARGV, 2 do redis.call('HSET', day, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', day, tonumber(ARGV[2]))
return 1
"""

REPLAN = """
-- KEYS[1] = the office's day hash
-- ARGV[1] = "dry" to only report, "apply" to write the new plan
-- ARGV[2] = the time ("HH:MM") up to which the day's slots have begun and keep their seats
--           (a clerk's change during the day: nobody is moved out of a slot under way), or ""
-- ARGV[3..] = field, seats pairs of the new plan ("s|pool|time", raw seats per slot)
-- Returns {field, new seats, used, ...} for every slot whose bookings the new plan cannot
-- hold (the overflow). Applying keeps every used counter: a slot that goes away while it
-- still has bookings stays with 0 seats until they are moved.
local day = KEYS[1]
if redis.call('EXISTS', day) == 0 then return {} end
local kept_to = ARGV[2]
local function begun(field) return kept_to ~= '' and string.sub(field, -5) <= kept_to end
local new = {}
for i = 3, #ARGV, 2 do
  if not begun(ARGV[i]) then new[ARGV[i]] = tonumber(ARGV[i + 1]) end
end
local function used(field) return tonumber(redis.call('HGET', day, 'u' .. string.sub(field, 2)) or '0') end
local overflow = {}
for field, seats in pairs(new) do
  local taken = used(field)
  if taken > seats then table.insert(overflow, field) table.insert(overflow, seats) table.insert(overflow, taken) end
end
local current = redis.call('HKEYS', day)
for _, field in ipairs(current) do
  if string.sub(field, 1, 2) == 's|' and new[field] == nil and not begun(field) and used(field) > 0 then
    table.insert(overflow, field) table.insert(overflow, 0) table.insert(overflow, used(field))
  end
end
if ARGV[1] == 'apply' then
  for _, field in ipairs(current) do
    local kind = string.sub(field, 1, 2)
    -- The slot times and the earliest-free cursors (RESERVE) are made again from the new plan.
    if kind == 't|' or kind == 'c|' then redis.call('HDEL', day, field) end
    if kind == 's|' and new[field] == nil and not begun(field) then
      if used(field) > 0 then
        redis.call('HSET', day, field, 0)
      else
        redis.call('HDEL', day, field, 'u' .. string.sub(field, 2))
      end
    end
  end
  for field, seats in pairs(new) do redis.call('HSET', day, field, seats) end
end
return overflow
"""

SET_META = """
-- KEYS[1..n] = day hashes of one office
-- ARGV[1] = status (active, restricted, blocked), ARGV[2..n+1] = cap percent of each day
-- Days not in Redis are skipped: materialising them reads the record, which already agrees.
-- Returns how many days it eased (a block gone, a higher cap): room that their lines take first.
local eased = 0
for i, day in ipairs(KEYS) do
  if redis.call('EXISTS', day) == 1 then
    local before = redis.call('HMGET', day, '_status', '_cap')
    local was_blocked = before[1] == 'blocked' and ARGV[1] ~= 'blocked'
    if was_blocked or tonumber(ARGV[i + 1]) > (tonumber(before[2]) or 100) then eased = eased + 1 end
    redis.call('HSET', day, '_status', ARGV[1], '_cap', ARGV[i + 1])
  end
end
return eased
"""

WRITE_LINE = """
-- KEYS[1] = a day's waitlist for a pool
-- ARGV[1] = unix time it expires at, ARGV[2..] = its tracking codes, first in line first
-- The line as the record has it, written at once: deleted first and filled later, a join
-- landing in between was written by both, its citizen twice in line (given two seats).
redis.call('DEL', KEYS[1])
for first = 2, #ARGV, 1000 do  -- a thousand at a time: unpack has a limit of its own
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""

HOLD = """
-- KEYS[1] = the citizen's holds hash: tracking code -> "date|service" (and "|tag", below),
--           and "_suspended" ->
--           the first date booking is allowed again after repeated no-shows
-- ARGV[1] = today "YYYY-MM-DD"; holds of earlier days are dropped as stale
-- ARGV[2] = date of the new booking, ARGV[3] = service code
-- ARGV[4] = tracking code of the new booking, ARGV[5] = most active bookings allowed
-- ARGV[6] = TTL of the hash in seconds (past the booking horizon)
-- ARGV[7] = "walk_in" for a clerk's walk-in: a suspension bars web and SMS booking only
-- ARGV[8] = the request's tag (its Idempotency-Key's, hashed; "" without one): a hold with
--           the same tag is the same request sent before (a double tap, a retry), neither
--           SAME_DAY nor counted, and RESERVE's key lets one of the two book. Told SAME_DAY,
--           each of a double tap split across two instances could be refused by the other's
--           hold and the other's seat: nothing booked, and one answered "already booked".
-- Returns {OK}, {AGAIN} (held beside a hold of the same request: the record may have its
-- booking, whose key Redis forgot after a day), {SUSPENDED, until}, {SAME_DAY} (an active
-- booking for this service that day), {TOO_MANY}, or {FORGOTTEN} (this booking was answered
-- 503 and forgotten: FORGET).
local holds = KEYS[1]
local today, wanted = ARGV[1], ARGV[2] .. '|' .. ARGV[3]
local tagged = (ARGV[8] or '') ~= '' and wanted .. '|' .. ARGV[8]
if redis.call('HEXISTS', holds, '!' .. ARGV[4]) == 1 then return {'FORGOTTEN'} end
local entries = redis.call('HGETALL', holds)
local active, again = 0, false
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  if field == '_suspended' then
    if value > today then
      if ARGV[7] ~= 'walk_in' then return {'SUSPENDED', value} end
    else
      redis.call('HDEL', holds, field)
    end
  elseif string.sub(value, 1, 10) < today then
    redis.call('HDEL', holds, field)
  elseif string.sub(field, 1, 1) == '!' then
    -- FORGET's mark, not a booking
  elseif value == tagged then
    again = true
  else
    if value == wanted or string.sub(value, 1, #wanted + 1) == wanted .. '|' then return {'SAME_DAY'} end
    active = active + 1
  end
end
if active >= tonumber(ARGV[5]) then return {'TOO_MANY'} end
redis.call('HSET', holds, ARGV[4], tagged or wanted)
if redis.call('TTL', holds) < tonumber(ARGV[6]) then redis.call('EXPIRE', holds, tonumber(ARGV[6])) end
if again then return {'AGAIN'} end
return {'OK'}
"""

FORGET = """
-- KEYS[1] = the citizen's holds hash
-- ARGV[1] = tracking code of a booking answered 503 whose HOLD may yet run (Redis ran it, or
--           will, after the answer timed out), ARGV[2] = its date, ARGV[3] = the hash's TTL
-- Frees the booking's hold, and leaves a mark ('!' and the code, dropped with the day) that
-- makes a late HOLD of it take nothing: deleted alone, the hold would come back.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], '!' .. ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
"""

FORGET_KEY = """
-- KEYS[1] = a request's Idempotency-Key mark
-- ARGV[1] = tracking code of a booking with that key answered 503, whose RESERVE may yet run
-- ARGV[2] = the mark's TTL in seconds
-- Marks the key forgotten for it ('!' and the code: RESERVE then takes nothing for it),
-- beside the marks of earlier requests with the key forgotten the same way (a retry answered
-- 503 too: marked alone, the first one's late RESERVE would book), unless a retry with the
-- key (another tracking code) has booked meanwhile: that booking's mark stays, so that the
-- next retry is answered with it.
local held = redis.call('GET', KEYS[1])
local mark = '!' .. ARGV[1]
if held and string.sub(held, 1, 1) ~= '!' and held ~= ARGV[1] then return 0 end
if held and string.sub(held, 1, 1) == '!' then
  if not string.find(held, mark, 1, true) then mark = held .. mark else mark = held end
end
redis.call('SET', KEYS[1], mark, 'EX', tonumber(ARGV[2]))
return 1
"""

HOLD_AGAIN = """
-- KEYS[1] = the citizen's holds hash
-- ARGV[1] = tracking code of a booking the record has, ARGV[2] = "date|service" as HOLD writes
-- it, ARGV[3] = the hash's TTL in seconds
-- Counts the booking against the citizen's limits whatever they say (it is booked), past a
-- FORGET mark of its own. The hash's life is only lengthened: a suspension may need longer.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
"""

NOTE_CHANGE = """
-- KEYS[1] = a hash of changes to apply, ARGV[1] = the change's id, ending with its tag after
-- the last '|', ARGV[2..] = the fields it changes
-- Notes the change for each field. A change noted there before and not yet applied is folded
-- in: its tag stays when the new one has none (a clerk's "cancel nobody" is not dropped by a
-- later change). Returns the change noted for the first field, and 1 if any field had one
-- folded in, else 0 (thousands of lines are noted at once: not an answer for each).
local first, folded = nil, 0
local tag = string.match(ARGV[1], '|([^|]*)$') or ''
for i = 2, #ARGV do
  local change = ARGV[1]
  local earlier = redis.call('HGET', KEYS[1], ARGV[i])
  if earlier then
    folded = 1
    if tag == '' then change = change .. (string.match(earlier, '|([^|]*)$') or '') end
  end
  redis.call('HSET', KEYS[1], ARGV[i], change)
  first = first or change
end
return {first, folded}
"""

FORGET_IF = """
-- KEYS[1] = a hash of things to do, ARGV[1] = a field, ARGV[2] = the value it was read with
-- Deletes the field only if no one has set it again since (a later change to do).
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

NOW_MS = """
local function now_ms()  -- this Redis's clock, in ms
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

TELL_CHANGES = (
    NOW_MS
    + """-- KEYS[1] = a sorted set of changes told to every instance (keys.DAYS_CHANGED, the signed-out
-- tokens of app.auth.signed_out), ARGV[1] = how long (ms) a change is kept, ARGV[2...] = what
-- changed. Scored by Redis's clock, which every instance reads alike (theirs may differ).
local now = now_ms()
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return now
"""
)

HEAR_CHANGES = (
    NOW_MS
    + """-- KEYS[1] = the set TELL_CHANGES adds to, ARGV[1] = the ms it scores by at the last look ("":
-- none; 0 for all the set holds)
-- Returns {that clock now, what changed since a second before the last look}: the second
-- because the clock may step back a little (NTP, a replica taking over), and what is
-- forgotten twice is only read again.
local now = now_ms()
if ARGV[1] == '' then return {now, {}} end
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(ARGV[1]) - 1000, '+inf')}
"""
)

SUSPEND = """
-- KEYS[1] = the citizen's holds hash
-- ARGV[1] = the first date booking is allowed again, ARGV[2] = seconds until then (and a day)
redis.call('HSET', KEYS[1], '_suspended', ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""


class Scripts:
    """The scripts registered on one connection.

    A single call falls back from EVALSHA to SCRIPT LOAD by itself, and so does a pipeline on
    a single Redis (one SCRIPT EXISTS). On Redis Cluster redis-py does not load scripts for
    pipelines (redis-py #2914), so ``run_many`` sends concurrent single calls there, after
    ``load``: dozens of them falling back at once on fresh connections failed inside
    redis-py (the cluster test's rebuild). On a single Redis it no longer loads first: that
    was nine trips on every call, 27 of a clerk's change.
    """

    def __init__(self, redis: Redis, auto: AutoPipeline) -> None:
        self.redis = redis
        self.auto = auto
        self.reserve = redis.register_script(RESERVE)
        self.release = redis.register_script(RELEASE)
        self.join_waitlist = redis.register_script(JOIN_WAITLIST)
        self.materialise = redis.register_script(MATERIALISE)
        self.set_meta = redis.register_script(SET_META)
        self.replan = redis.register_script(REPLAN)
        self.hold = redis.register_script(HOLD)
        self.write_line = redis.register_script(WRITE_LINE)
        self.suspend = redis.register_script(SUSPEND)
        self.forget = redis.register_script(FORGET)
        self.forget_key = redis.register_script(FORGET_KEY)
        self.hold_again = redis.register_script(HOLD_AGAIN)
        self.unpromote = redis.register_script(UNPROMOTE)
        self.forget_if = redis.register_script(FORGET_IF)
        self.note_change = redis.register_script(NOTE_CHANGE)

    async def run_many(
        self, script: AsyncScript, calls: Sequence[tuple[list[str], list[Any]]], *, raise_errors: bool = True
    ) -> list[Any]:
        """Run one script for many (keys, args): pipelined on a single Redis (the pipeline
        loads a script Redis forgot); on a cluster, where redis-py refuses scripts in
        pipelines, as batches of concurrent calls. Every call runs even when one fails;
        ``raise_errors=False`` returns a failed call's error in its place."""
        if isinstance(self.redis, RedisCluster):
            await self.load()
            results: list[Any] = []
            for start in range(0, len(calls), 64):
                batch = calls[start : start + 64]
                results += await asyncio.gather(*(script(keys=k, args=a) for k, a in batch), return_exceptions=True)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for k, a in calls:
                    await script(keys=k, args=a, client=pipe)
                results = list(await pipe.execute(raise_on_error=False))
        if raise_errors:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    async def load(self) -> None:
        """Every script registered here (a list of them had left the recount's newest out: on
        a cluster its first run after a deploy or a failover fell back inside redis-py)."""
        for script in vars(self).values():
            if isinstance(script, AsyncScript):
                await self.redis.script_load(script.script)


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
