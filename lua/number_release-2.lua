-- number_release: stop renting a number (no refund of the month begun).
--
-- KEYS[1] numbers   hash  number -> JSON record
-- KEYS[2] rent_due  zset  number -> next renewal ms
-- ARGV[1] number    string
-- Replies:
--   {0, record}   released; the record it had
--   {-5}          the workspace does not rent this number
local rcall = redis.call
local numbers, rent_due = KEYS[1], KEYS[2]
local number = ARGV[1]

local raw = rcall('HGET', numbers, number)
if not raw then return {-5} end
rcall('HDEL', numbers, number)
rcall('ZREM', rent_due, number)
return {0, raw}
