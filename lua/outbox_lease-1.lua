-- outbox_lease: take (or renew) the right to deliver one workspace's events.
--
-- Several gate processes share the work; the lease makes sure only one of them sends a
-- workspace's events at a time, and a process that dies leaves the work to the others once
-- its lease runs out (its unrecorded sends are redone: at least once).
--
-- KEYS[1] outbox  hash  delivery state of the workspace's events (see lua/_outbox.lua)
-- ARGV[1] owner     string   id of the delivering process (one per Outbox instance)
-- ARGV[2] now_ms    integer
-- ARGV[3] lease_ms  integer  how long the lease holds without a renewal
-- Replies:
--   {0}              taken or renewed: until now_ms + lease_ms
--   {-3, until_ms}   another owner holds it until then (nothing changed)
-- Side effects: none beyond the owner and until fields.
local rcall = redis.call
local outbox = KEYS[1]
local owner = ARGV[1]
local now_ms, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])

local held = rcall('HMGET', outbox, 'owner', 'until')
local until_ms = tonumber(held[2]) or 0
if held[1] and held[1] ~= owner and until_ms > now_ms then return {-3, until_ms} end
rcall('HSET', outbox, 'owner', owner, 'until', now_ms + lease_ms)
return {0}
