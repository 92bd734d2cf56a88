-- key_revoke: delete an API key of a workspace by its public id, and tell every gate process.
--
-- KEYS[1] ws    hash  workspace record (must exist)
-- KEYS[2] keys  hash  sha256(api key) -> "<role> <key id>[ <expires ms>]"
-- ARGV[1] key_id   string  the key's public id (key_...)
-- ARGV[2] channel  string  pub/sub channel of revocations (gate:keys:revoked)
-- ARGV[3] ws_id    string  the workspace id, published on the channel
-- Replies:
--   {0, role}  deleted; every process subscribed drops the workspace's cached keys
--   {-1}       no such workspace (nothing changed)
--   {-5}       no key with that id in the workspace (nothing changed)
-- Side effects: PUBLISH channel ws_id.
local rcall = redis.call
local ws, keys = KEYS[1], KEYS[2]
local key_id, channel, ws_id = ARGV[1], ARGV[2], ARGV[3]

if rcall('EXISTS', ws) == 0 then return {-1} end
local all = rcall('HGETALL', keys)
for i = 1, #all, 2 do
  local role, id = string.match(all[i + 1], '^(%S+) (%S+)')
  if id == key_id then
    rcall('HDEL', keys, all[i])
    rcall('PUBLISH', channel, ws_id)
    return {0, role}
  end
end
return {-5}
