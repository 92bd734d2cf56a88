-- key_create: store the hash of a new API key of a workspace, with its audit entry.
--
-- KEYS[1] ws     hash    workspace record (must exist)
-- KEYS[2] keys   hash    sha256(api key) -> "<role> <key id>[ <expires ms>[ <person>]]"
-- KEYS[3] audit  stream  the workspace's audit log (lua/_audit.lua)
-- ARGV[1] key_hash    string  sha256 hex of the key (the key itself is never stored)
-- ARGV[2] role        string  platform|org_admin|admin|switch|agent
-- ARGV[3] key_id      string
-- ARGV[4] expires_ms  int     ms since the epoch after which the key is refused; 0: never
-- ARGV[5] person      string  the person the key is for, percent-encoded ("" none)
-- ARGV[6] now_ms      integer
-- ARGV[7] by_key      who: the creating key's public id
-- ARGV[8] by_person   who: the person named on it ("" unknown)
-- ARGV[9] ip          who: the caller's address
-- Replies:
--   {0}   stored
--   {-1}  no such workspace (nothing changed)
local rcall = redis.call
local ws, keys, audit_log = KEYS[1], KEYS[2], KEYS[3]
local key_hash, role, key_id = ARGV[1], ARGV[2], ARGV[3]
local expires_ms = tonumber(ARGV[4]) or 0
local person, now_ms = ARGV[5], tonumber(ARGV[6])
local who = {ARGV[7], ARGV[8], ARGV[9]}

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local record = role .. ' ' .. key_id
if expires_ms > 0 or person ~= '' then record = record .. ' ' .. string.format('%d', expires_ms) end
if person ~= '' then record = record .. ' ' .. person end
rcall('HSET', keys, key_hash, record)
audit(audit_log, now_ms, who, 'key.created', key_id, '{}',
  cjson.encode({role = role, expires_ms = expires_ms, person = person}))
return {0}
