-- key_expired: note in the audit log, once, that a key was found past its expiry (it stays
-- listed, marked expired, until someone revokes it).
--
-- KEYS[1] ws       hash    workspace record (must exist)
-- KEYS[2] expired  set     ids of the workspace's keys already noted as expired
-- KEYS[3] audit    stream  the workspace's audit log (lua/_audit.lua)
-- ARGV[1] key_id   string
-- ARGV[2] now_ms   integer
-- Replies:
--   {0, noted}  noted 1 when this call wrote the entry, 0 when it was written before
--   {-1}        no such workspace
local rcall = redis.call
local ws, expired, audit_log = KEYS[1], KEYS[2], KEYS[3]
local key_id, now_ms = ARGV[1], tonumber(ARGV[2])

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
if rcall('SADD', expired, key_id) == 0 then return {0, 0} end
audit(audit_log, now_ms, {'gate', '', ''}, 'key.expired', key_id, '{}', '{}')
return {0, 1}
