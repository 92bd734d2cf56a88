-- audited_set: set or delete one field of a workspace hash (payment methods, spending alerts'
-- state, ...) with its audit entry, for changes that need no logic of their own in Lua.
--
-- KEYS[1] ws      hash    workspace record (must exist)
-- KEYS[2] target  hash    the hash changed (a key of the same workspace)
-- KEYS[3] audit   stream  the workspace's audit log (lua/_audit.lua)
-- ARGV[1] now_ms   integer
-- ARGV[2] action   string  e.g. payment_method.added
-- ARGV[3] key_id   who
-- ARGV[4] person   who
-- ARGV[5] ip       who
-- ARGV[6] field    string
-- ARGV[7] value    string  "" deletes the field
-- ARGV[8] before   string  JSON the audit entry shows as before ("" = the field's old value)
-- ARGV[9] after    string  JSON the audit entry shows as after ("" = the new value)
-- Replies:
--   {0, existed}  done; existed 1 when the field was there before
--   {-1}          no such workspace (nothing changed)
local rcall = redis.call
local ws, target, audit_log = KEYS[1], KEYS[2], KEYS[3]
local now_ms, action = tonumber(ARGV[1]), ARGV[2]
local who = {ARGV[3], ARGV[4], ARGV[5]}
local field, value, shown_before, shown_after = ARGV[6], ARGV[7], ARGV[8], ARGV[9]

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local old = rcall('HGET', target, field)
if value == '' then rcall('HDEL', target, field) else rcall('HSET', target, field, value) end
if shown_before == '' then shown_before = cjson.encode({[field] = old or cjson.null}) end
if shown_after == '' then
  shown_after = cjson.encode({[field] = value ~= '' and value or cjson.null})
end
audit(audit_log, now_ms, who, action, field, shown_before, shown_after)
return {0, old and 1 or 0}
