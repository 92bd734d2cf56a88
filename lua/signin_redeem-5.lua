-- signin_redeem: turn a one-time sign-in link into a short-lived key named for its person:
-- the link is deleted in the same step, so a second use of it finds nothing.
--
-- KEYS[1] ws     hash    workspace record (must exist)
-- KEYS[2] keys   hash    sha256(api key) -> "<role> <key id> <expires ms> <person>"
-- KEYS[3] audit  stream  the workspace's audit log (lua/_audit.lua)
-- KEYS[4] link   hash    the link: role, person (percent-encoded), key_ttl_s, issuer
--                        (written by lua/signin_issue-4.lua, with a TTL)
-- KEYS[5] wallet hash    its hold: a closing or closed workspace mints no key
-- ARGV[1] key_hash  string   sha256 hex of the new key
-- ARGV[2] key_id    string
-- ARGV[3] now_ms    integer
-- ARGV[4] ip        string   the address redeeming the link
-- ARGV[5] wall_ms   integer  wall-clock ms: key expiries are wall-clock times (the gate's
--                            authenticator compares them with its host's clock)
-- Replies:
--   {0, role, person, expires_ms}  the key is stored
--   {-1}                           no such workspace
--   {-5}                           no such link: never made, used already, or expired
--   {-20, hold}                    the platform suspended or closed the workspace
local rcall = redis.call
local ws, keys, audit_log, link, wallet = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local key_hash, key_id, now_ms, ip = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local wall_ms = tonumber(ARGV[5])

--!include _audit.lua

local l = rcall('HMGET', link, 'role', 'person', 'key_ttl_s', 'issuer')
if not l[1] then return {-5} end
rcall('DEL', link)
if rcall('EXISTS', ws) == 0 then return {-1} end
local hold = rcall('HGET', wallet, 'hold')
if hold == 'closing' or hold == 'closed' then return {-20, hold} end
local expires_ms = wall_ms + tonumber(l[3]) * 1000
rcall('HSET', keys, key_hash, l[1] .. ' ' .. key_id .. ' ' .. string.format('%d', expires_ms)
  .. ' ' .. l[2])
audit(audit_log, now_ms, {l[4], l[2], ip}, 'key.created', key_id, '{}',
  cjson.encode({role = l[1], expires_ms = expires_ms, person = l[2], via = 'signin_link'}))
return {0, l[1], l[2], expires_ms}
