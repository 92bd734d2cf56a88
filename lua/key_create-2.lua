-- key_create: store the hash of a new API key of a workspace.
--
-- KEYS[1] ws    hash  workspace record (must exist)
-- KEYS[2] keys  hash  sha256(api key) -> "<role> <key id>[ <expires ms>]"
-- ARGV[1] key_hash    string  sha256 hex of the key (the key itself is never stored)
-- ARGV[2] role        string  platform|org_admin|admin|switch|agent
-- ARGV[3] key_id      string
-- ARGV[4] expires_ms  int     ms since the epoch after which the key is refused; 0: never
--                             (optional: a missing ARGV[4] means never)
-- Replies:
--   {0}   stored
--   {-1}  no such workspace (nothing changed)
local rcall = redis.call
local ws, keys = KEYS[1], KEYS[2]
local key_hash, role, key_id = ARGV[1], ARGV[2], ARGV[3]
local expires_ms = tonumber(ARGV[4] or '0') or 0

if rcall('EXISTS', ws) == 0 then return {-1} end
local record = role .. ' ' .. key_id
if expires_ms > 0 then record = record .. ' ' .. string.format('%d', expires_ms) end
rcall('HSET', keys, key_hash, record)
return {0}
