-- audit_append: one audit entry for a change made outside Redis (a rate card reloaded into
-- the gate's memory), so its id follows the stream's order as every other entry's does.
--
-- KEYS[1] audit  stream  an audit log (the platform's own: gate:{platform}:audit)
-- ARGV[1] now_ms   integer
-- ARGV[2] action   string
-- ARGV[3] key_id   who
-- ARGV[4] person   who
-- ARGV[5] ip       who
-- ARGV[6] target   string
-- ARGV[7] before   JSON
-- ARGV[8] after    JSON
-- Replies:
--   {0, id}  the entry's id
local rcall = redis.call

--!include _audit.lua

local id = audit(KEYS[1], tonumber(ARGV[1]), {ARGV[3], ARGV[4], ARGV[5]}, ARGV[2], ARGV[6],
  ARGV[7], ARGV[8])
return {0, id}
