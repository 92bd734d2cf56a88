-- key_revoke: delete an API key of a workspace by its public id, tell every gate process, and
-- write the audit entry.
--
-- KEYS[1] ws     hash    workspace record (must exist)
-- KEYS[2] keys   hash    sha256(api key) -> "<role> <key id>[ <expires ms>[ <person>]]"
-- KEYS[3] audit  stream  the workspace's audit log (lua/_audit.lua)
-- ARGV[1] key_id   string  the key's public id (key_...)
-- ARGV[2] channel  string  pub/sub channel of revocations (gate:keys:revoked)
-- ARGV[3] ws_id    string  the workspace id, published on the channel
-- ARGV[4] now_ms   integer
-- ARGV[5] action   the audit entry's action: key.revoked
-- ARGV[6] by_key   who: the revoking key's public id
-- ARGV[7] person   who: the person named on it ("" unknown)
-- ARGV[8] ip       who: the caller's address
-- Replies:
--   {0, role}  deleted; every process subscribed drops the workspace's cached keys
--   {-1}       no such workspace (nothing changed)
--   {-5}       no key with that id in the workspace (nothing changed)
-- Side effects: PUBLISH channel ws_id; one audit entry.
local rcall = redis.call
local ws, keys, audit_log = KEYS[1], KEYS[2], KEYS[3]
local key_id, channel, ws_id = ARGV[1], ARGV[2], ARGV[3]
local now_ms, action = tonumber(ARGV[4]), ARGV[5]
local who = {ARGV[6], ARGV[7], ARGV[8]}

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local all = rcall('HGETALL', keys)
for i = 1, #all, 2 do
  local role, id = string.match(all[i + 1], '^(%S+) (%S+)')
  if id == key_id then
    rcall('HDEL', keys, all[i])
    rcall('PUBLISH', channel, ws_id)
    local _, _, _, person = string.match(all[i + 1], '^(%S+) (%S+) ?(%S*) ?(%S*)')
    audit(audit_log, now_ms, who, action, key_id, cjson.encode({role = role, person = person}),
      '{}')
    return {0, role}
  end
end
return {-5}
