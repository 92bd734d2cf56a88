-- call_tick: bill a batch of due calls of one workspace, extend their horizons, send cuts
-- at their cut time, and finalize calls that went silent or ran past max_call_s.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms         integer
-- ARGV[2] batch          integer  most calls handled in one run
-- ARGV[3] stale_after_s  integer  silence of a reporting switch (heartbeats or syncs), or
--                                  time a call stays up past a cut it was sent, after which
--                                  the call is finalized
-- ARGV[4] evidence_max_s integer  optional (0 = none): a call with no evidence (answer,
--                                  heartbeat, sync listing) for this long is ended as
--                                  lost_end, billed to its last evidence plus one tick
-- Replies:
--   {0, handled, next_due_ms, cuts_sent, events, lag_ms...}  next_due_ms = -1 when no call
--     is scheduled any more; events = how many events were written; one lag (now - due)
--     per handled call
-- Side effects: holds grow (wallet.reserved); call.limit, call.extended, call.cut and
-- wallet.depleted events; stale calls get call.cut (reason stale) and one ledger row each,
-- billed to the last evidence plus one tick (_call.lua lost_duration); unanswered calls
-- past their ring timeout end unbilled, with no ledger row; unvouched calls (ARGV[4]) get
-- call.cut (reason lost_end) and one ledger row flagged lost_end.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local batch, stale_ms = tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

evidence_max_ms = (tonumber(ARGV[4]) or 0) * 1000
prime_wallet()  -- one wallet read for the plan's cycle end, the money and event_seq
plan_roll(now_ms)  -- a cycle that ended is rolled before anything is billed

local items = rcall('ZRANGEBYSCORE', due, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, batch)
local reply = {0, 0, -1, 0, 0}
local function event_seq()
  if known then return known.event_seq end
  return tonumber(rcall('HGET', wallet, 'event_seq')) or 0
end
local seq0 = event_seq()
for i = 1, #items, 2 do
  local id, due_ms = items[i], tonumber(items[i + 1])
  local c = load_call(id)
  if not c then
    rcall('ZREM', due, id)
  else
    reply[2] = reply[2] + 1
    reply[#reply + 1] = now_ms - due_ms
    if c.ans == 0 then
      -- Not answered yet: the ring timeout ends it, unbilled; a wake-up (money arrived,
      -- another call's hold released) just puts it back on its schedule.
      if now_ms >= c.t0 + (c.ring or c.max) * 1000 then
        send_cut(c, now_ms, 'ring_timeout')
        finish(c, 0, now_ms, 'ring_timeout', 'ring_timeout')
      else
        schedule(c, now_ms)
      end
    else
      local e = math.max(math.floor((now_ms - c.ans) / 1000), 0)
      local silent = reports(c) and now_ms - evidence_ms(c) > stale_ms
      local ignored_cut = c.cs == 1 and c.cut ~= 0 and now_ms - c.cut > stale_ms
      if silent or ignored_cut or e >= c.max then
        send_cut(c, now_ms, 'stale')
        finish(c, lost_duration(c, e), now_ms, 'stale', 'stale')
      elseif evidence_max_ms > 0 and now_ms - evidence_ms(c) > evidence_max_ms then
        send_cut(c, now_ms, 'lost_end')
        finish(c, lost_duration(c, e), now_ms, 'lost_end', 'lost_end')
      else
        extend(c, e, now_ms)
        if c.cut ~= 0 and c.cs == 0 and now_ms >= c.cut then
          send_cut(c, now_ms, c.dir == 'inbound' and 'limit' or 'balance')
          reply[4] = reply[4] + 1
        end
        save_call(c)
        schedule(c, now_ms)
      end
    end
  end
end
local head = rcall('ZRANGE', due, 0, 0, 'WITHSCORES')
if #head > 0 then reply[3] = tonumber(head[2]) end
reply[5] = event_seq() - seq0
return reply
