-- mail_retry: put a dead-lettered alert mail job back in the queue (gate mail retry).
--
-- KEYS[1] wallet  hash    mail:<n> jobs, mail_pending (_watch.lua)
-- KEYS[2] dead    hash    n -> JSON {job, tries, error, dead_at_ms} (mail_dead-3.lua)
-- ARGV[1] number  integer  the job's n
-- Replies:
--   {0}   queued again, with a fresh retry budget
--   {1}   no such dead job: nothing changed
-- Side effects: none beyond the move.
local rcall = redis.call
local wallet, dead = KEYS[1], KEYS[2]
local number = ARGV[1]

local raw = rcall('HGET', dead, number)
if not raw then return {1} end
rcall('HSET', wallet, 'mail:' .. number, cjson.decode(raw).job)
rcall('HDEL', wallet, 'mtry:' .. number)
rcall('HINCRBY', wallet, 'mail_pending', 1)
rcall('HDEL', dead, number)
return {0}
