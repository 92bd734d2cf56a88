-- signin_issue: the platform makes a one-time sign-in link for one person of a workspace.
--
-- KEYS[1] ws     hash    workspace record (must exist)
-- KEYS[2] link   hash    the link (sha256 of its token in the name): role, person, key_ttl_s,
--                        issuer; it expires after ARGV[5] seconds
-- KEYS[3] audit  stream  the workspace's audit log (lua/_audit.lua)
-- KEYS[4] wallet hash    its hold: a closing or closed workspace gets no link
-- ARGV[1] role       admin | agent
-- ARGV[2] person     string  percent-encoded
-- ARGV[3] key_ttl_s  integer  the life of the key the link mints
-- ARGV[4] now_ms     integer
-- ARGV[5] link_ttl_s integer  the life of the link
-- ARGV[6..8] who     key id, person, address of the issuer
-- Replies:
--   {0}          the link is stored
--   {-1}         no such workspace
--   {-20, hold}  the platform closed the workspace
local rcall = redis.call
local ws, link, audit_log, wallet = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local role, person, key_ttl = ARGV[1], ARGV[2], ARGV[3]
local now_ms, link_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local who = {ARGV[6], ARGV[7], ARGV[8]}

--!include _audit.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local hold = rcall('HGET', wallet, 'hold')
if hold == 'closing' or hold == 'closed' then return {-20, hold} end
rcall('HSET', link, 'role', role, 'person', person, 'key_ttl_s', key_ttl, 'issuer', who[1])
rcall('EXPIRE', link, link_ttl)
audit(audit_log, now_ms, who, 'signin_link.issued', person, '{}',
  cjson.encode({role = role, person = person, key_ttl_s = tonumber(key_ttl),
    link_expires_ms = now_ms + link_ttl * 1000}))
return {0}
