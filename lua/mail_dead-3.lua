-- mail_dead: give up on one alert mail job: move it to the dead-letter hash and tell.
--
-- A job that could not be rendered, or whose send failed MAIL_TRIES times, leaves the queue
-- so it cannot hold up the workspace's later mail; `gate mail retry` puts it back.
--
-- KEYS[1] wallet  hash    mail:<n> jobs, mtry:<n> retry state, mail_pending (_watch.lua)
-- KEYS[2] dead    hash    n -> JSON {job, tries, error, dead_at_ms}
-- KEYS[3] events  stream  event outbox
-- ARGV[1] now_ms  integer
-- ARGV[2] number  integer  the job's n
-- ARGV[3] tries   integer  attempts made
-- ARGV[4] error   string   the last failure, for the operator
-- Replies:
--   {0}   moved
--   {1}   no such job (sent or moved by another worker): nothing changed
-- Side effects: a mail.dead event (number, kind, tries, error).
local rcall = redis.call
local wallet, dead, events = KEYS[1], KEYS[2], KEYS[3]
local now_ms, number = tonumber(ARGV[1]), ARGV[2]
local tries, err = tonumber(ARGV[3]), ARGV[4]

--!include _post.lua

local job = rcall('HGET', wallet, 'mail:' .. number)
if not job then return {1} end
rcall('HSET', dead, number, cjson.encode({job = job, tries = tries, error = err,
  dead_at_ms = now_ms}))
rcall('HDEL', wallet, 'mail:' .. number, 'mtry:' .. number)
rcall('HINCRBY', wallet, 'mail_pending', -1)
local kind = string.match(job, '^([^|]*)')
emit(events, wallet, now_ms, 'mail.dead', {'number', number, 'kind', kind, 'tries', tries,
  'error', err})
return {0}
