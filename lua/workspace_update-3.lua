-- workspace_update: set or clear fields of a workspace record (settings, webhook URL, ...),
-- with one audit entry naming each field's value before and after.
--
-- KEYS[1] ws      hash    workspace record (must exist)
-- KEYS[2] wallet  hash    its "version" is bumped so wallet ETags change with the settings
-- KEYS[3] audit   stream  the workspace's audit log (lua/_audit.lua)
-- ARGV[1] now_ms   integer
-- ARGV[2] action   string  the audit entry's action, e.g. workspace.updated
-- ARGV[3] key_id   who: the key's public id
-- ARGV[4] person   who: the person named on the key ("" unknown)
-- ARGV[5] ip       who: the caller's address ("" from inside the gate)
-- ARGV[6..n] field, value pairs; an empty value removes the field (back to the default).
--            A field whose name holds "secret" is audited as "(changed)", never its value.
-- Replies:
--   {0, version}  updated (no audit entry when no field changed)
--   {-1}          no such workspace (nothing changed)
local rcall = redis.call
local ws, wallet, audit_log = KEYS[1], KEYS[2], KEYS[3]
local now_ms, action = tonumber(ARGV[1]), ARGV[2]
local who = {ARGV[3], ARGV[4], ARGV[5]}

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local before, after, changed = {}, {}, false
for i = 6, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  local old = rcall('HGET', ws, name)
  local new = value ~= '' and value or nil
  if old ~= (new or false) then
    changed = true
    local secret = string.find(name, 'secret', 1, true)
    before[name] = old and (secret and '(set)' or old) or cjson.null
    after[name] = new and (secret and '(changed)' or new) or cjson.null
  end
  if new then rcall('HSET', ws, name, new) else rcall('HDEL', ws, name) end
end
if changed then
  audit(audit_log, now_ms, who, action, rcall('HGET', ws, 'id'), cjson.encode(before),
    cjson.encode(after))
end
return {0, rcall('HINCRBY', wallet, 'version', 1)}
