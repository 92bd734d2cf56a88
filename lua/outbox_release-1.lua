-- outbox_release: give up the delivery lease of one workspace, if this owner still holds it.
--
-- KEYS[1] outbox  hash  delivery state of the workspace's events (see lua/_outbox.lua)
-- ARGV[1] owner   string  id of the delivering process
-- Replies:
--   {0}    released
--   {-3}   another owner holds it (or nobody): nothing changed
-- Side effects: none.
local rcall = redis.call
local outbox = KEYS[1]
local owner = ARGV[1]

if rcall('HGET', outbox, 'owner') ~= owner then return {-3} end
rcall('HDEL', outbox, 'owner', 'until')
return {0}
