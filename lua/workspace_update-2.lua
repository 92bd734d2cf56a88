-- workspace_update: set or clear fields of a workspace record (settings, webhook URL, ...).
--
-- KEYS[1] ws      hash  workspace record (must exist)
-- KEYS[2] wallet  hash  its "version" is bumped so wallet ETags change with the settings
-- ARGV[1..n] field, value pairs; an empty value removes the field (back to the default)
-- Replies:
--   {0, version}  updated
--   {-1}          no such workspace (nothing changed)
local rcall = redis.call
local ws, wallet = KEYS[1], KEYS[2]

if rcall('EXISTS', ws) == 0 then return {-1} end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    rcall('HDEL', ws, ARGV[i])
  else
    rcall('HSET', ws, ARGV[i], ARGV[i + 1])
  end
end
return {0, rcall('HINCRBY', wallet, 'version', 1)}
