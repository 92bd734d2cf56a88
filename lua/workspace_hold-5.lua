-- workspace_hold: the platform suspends, resumes or closes a workspace (its "hold"), with an
-- audit entry in the same step.
--
-- KEYS[1] ws      hash    workspace record (must exist); closing turns auto-recharge off
-- KEYS[2] wallet  hash    hold ("" | suspended | closing | closed), hold_reason, hold_ms,
--                         version (bumped so wallet ETags change)
-- KEYS[3] audit   stream  the workspace's audit log (lua/_audit.lua)
-- KEYS[4] events  stream  event outbox
-- KEYS[5] keys    hash    API keys: deleted when the workspace is closed
-- ARGV[1] now_ms     integer
-- ARGV[2] verb       suspend | resume | close | closed
--                    close: refuse starts and payments from now on (hold "closing"), the
--                    caller then ends calls, releases numbers, settles the balance, and
--                    calls again with "closed"
-- ARGV[3] reason     string (suspend, close); the final statement JSON (closed)
-- ARGV[4] key_id     who: the key's public id
-- ARGV[5] person     who: the person named on the key ("" unknown)
-- ARGV[6] ip         who: the caller's address ("" from the CLI)
-- ARGV[7] channel    pub/sub channel of key revocations (closed: every process drops the keys)
-- ARGV[8] ws_id      the workspace id (published on the channel)
-- Replies:
--   {0, hold}       done; hold is the new state
--   {1, hold}       close of a workspace already closing: nothing changed, continue it
--   {-1}            no such workspace
--   {-8, hold}      the verb does not apply to the current state ("" = active): nothing changed
-- Side effects: one audit entry; events workspace.suspended / workspace.resumed /
-- workspace.closed; closed deletes every API key and publishes on the channel.
local rcall = redis.call
local ws, wallet, audit_log, events, keys = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now_ms = tonumber(ARGV[1])
local verb, reason = ARGV[2], ARGV[3]
local who = {ARGV[4], ARGV[5], ARGV[6]}
local channel, ws_id = ARGV[7], ARGV[8]

--!include _post.lua
--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local w = rcall('HMGET', wallet, 'hold', 'hold_reason')
local hold, old_reason = w[1] or '', w[2] or ''

local function state(h, r)
  return cjson.encode({state = h == '' and 'active' or h, reason = r})
end

if verb == 'suspend' then
  if hold ~= '' then return {-8, hold} end
  rcall('HSET', wallet, 'hold', 'suspended', 'hold_reason', reason, 'hold_ms', now_ms)
  audit(audit_log, now_ms, who, 'workspace.suspended', ws_id, state(hold, old_reason),
    state('suspended', reason))
  emit(events, wallet, now_ms, 'workspace.suspended', {'reason', reason})
  rcall('HINCRBY', wallet, 'version', 1)
  return {0, 'suspended'}
elseif verb == 'resume' then
  if hold ~= 'suspended' then return {-8, hold} end
  rcall('HDEL', wallet, 'hold', 'hold_reason', 'hold_ms')
  audit(audit_log, now_ms, who, 'workspace.resumed', ws_id, state(hold, old_reason),
    state('', ''))
  emit(events, wallet, now_ms, 'workspace.resumed', {})
  rcall('HINCRBY', wallet, 'version', 1)
  return {0, ''}
elseif verb == 'close' then
  if hold == 'closed' then return {-8, hold} end
  if hold == 'closing' then return {1, hold} end
  rcall('HSET', wallet, 'hold', 'closing', 'hold_reason', reason, 'hold_ms', now_ms)
  -- no automatic charge may start while the balance is being settled
  local ar = rcall('HGET', ws, 'ar_enabled')
  if ar == '1' then rcall('HSET', ws, 'ar_enabled', '0') end
  audit(audit_log, now_ms, who, 'workspace.closing', ws_id, state(hold, old_reason),
    state('closing', reason))
  rcall('HINCRBY', wallet, 'version', 1)
  return {0, 'closing'}
elseif verb == 'closed' then
  if hold ~= 'closing' then return {-8, hold} end
  rcall('HSET', wallet, 'hold', 'closed', 'hold_ms', now_ms)
  rcall('HSET', ws, 'closed_statement', reason, 'closed_ms', now_ms)
  local revoked = {}
  local all = rcall('HGETALL', keys)
  for i = 1, #all, 2 do
    local _, id = string.match(all[i + 1], '^(%S+) (%S+)')
    revoked[#revoked + 1] = id
  end
  rcall('DEL', keys)
  rcall('PUBLISH', channel, ws_id)
  local after = cjson.encode({state = 'closed', reason = old_reason,
    keys_revoked = table.concat(revoked, ',')})
  audit(audit_log, now_ms, who, 'workspace.closed', ws_id, state(hold, old_reason), after)
  emit(events, wallet, now_ms, 'workspace.closed', {'reason', old_reason})
  rcall('HINCRBY', wallet, 'version', 1)
  return {0, 'closed'}
end
return redis.error_reply('workspace_hold: unknown verb ' .. verb)
