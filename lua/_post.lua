-- Include: post one balance change with its ledger row and its events.
-- Every script that moves money includes this file and calls post(); nothing else may touch
-- the wallet's balance, so the ledger and the balance cannot drift apart.
--
-- Wallet hash fields used here: balance, version, ledger_ms, event_seq, status, zero_since.
-- Ledger stream entries: id "<at ms>-<n>" (at never goes backwards), fields
--   type, desc, amount, balance, ref, then any extra (name, value) pairs of the caller.
-- Event stream entries: type, at, seq, then "d:<name>" data fields (strings; the gate
--   renders them; cjson would print large integers in exponent form).
-- Needs the locals `rcall` and `ws` (the workspace hash, KEYS[1] of every script including
-- this) defined before the include: post() runs the wallet's watch (lua/_watch.lua).

local EVENTS_MAXLEN = 100000

-- Wallet fields a call script read in its first wallet read (prime_wallet, lua/_call.lua),
-- kept current by every write below so later reads need no command of their own; nil in
-- scripts that did not prime them (then each is read from Redis where it is needed).
--   known       balance, reserved, event_seq (numbers)
--   known_post  ledger_ms (number), status, zero_since (false when absent): post()'s reads
local known = nil
local known_post = nil

local function emit(events, wallet, now_ms, etype, data)
  local seq = rcall('HINCRBY', wallet, 'event_seq', 1)
  if known then known.event_seq = seq end
  local entry = {'type', etype, 'at', now_ms, 'seq', seq}
  for i = 1, #data, 2 do
    entry[#entry + 1] = 'd:' .. data[i]
    entry[#entry + 1] = data[i + 1]
  end
  return rcall('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*', unpack(entry))
end

--!include _watch.lua

-- The fields of ledger row `id` as a table, or nil when it is not in Redis (archived).
local function ledger_row(ledger, id)
  local row = rcall('XRANGE', ledger, id, id)[1]
  if not row then return nil end
  local f = {}
  for i = 1, #row[2], 2 do f[row[2][i]] = row[2][i + 1] end
  return f
end

-- Returns the ledger row id and the balance after the change.
local function post(wallet, ledger, events, now_ms, amount, rtype, desc, ref, extra)
  if amount == 0 then amount = 0 end  -- -0 would reach HINCRBY as "-0", not an integer
  local balance = rcall('HINCRBY', wallet, 'balance', amount)
  if known then known.balance = balance end
  rcall('HINCRBY', wallet, 'version', 1)
  local kp = known_post
  local last
  if kp then last = kp.ledger_ms else last = tonumber(rcall('HGET', wallet, 'ledger_ms')) or 0 end
  local at = now_ms
  if at < last then at = last end
  rcall('HSET', wallet, 'ledger_ms', at)
  if kp then kp.ledger_ms = at end
  local row = {'type', rtype, 'desc', desc, 'amount', amount, 'balance', balance, 'ref', ref}
  for i = 1, #extra do row[#row + 1] = extra[i] end
  local id = rcall('XADD', ledger, at .. '-*', unpack(row))
  emit(events, wallet, now_ms, 'transaction.created',
    {'id', id, 'type', rtype, 'amount_micros', amount, 'balance_after_micros', balance,
     'reference', ref})
  if balance > 0 then
    if not kp or kp.zero_since then rcall('HDEL', wallet, 'zero_since') end
    local status
    if kp then status = kp.status else status = rcall('HGET', wallet, 'status') end
    if status == 'suspended' then
      rcall('HSET', wallet, 'status', 'active')
      if kp then kp.status = 'active' end
    end
    if kp then kp.zero_since = false end
  else
    local zero
    if kp then zero = kp.zero_since else zero = rcall('HGET', wallet, 'zero_since') end
    if not zero then
      rcall('HSET', wallet, 'zero_since', now_ms)
      if kp then kp.zero_since = now_ms end
    end
  end
  watch(ws, wallet, events, now_ms)
  return id, balance
end

-- Money arrived or was released: make every limited call due now, so the ticker re-extends
-- its horizon and lifts the limit. Returns how many calls were woken.
local function wake_limited(cuts, due, wallet, now_ms)
  rcall('HDEL', wallet, 'depleted')
  local ids = rcall('SMEMBERS', cuts)
  for i = 1, #ids do rcall('ZADD', due, now_ms, ids[i]) end
  return #ids
end
