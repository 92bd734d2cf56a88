-- workspace_create: make a workspace, its wallet with the signup credit, and its first key.
--
-- KEYS[1] ws      hash   workspace record (name, organization, webhook secret, settings)
-- KEYS[2] wallet  hash   balance, reserved, version, status, counters
-- KEYS[3] keys    hash   sha256(api key) -> "<role> <key id>"
-- KEYS[4] ledger  stream ledger rows
-- KEYS[5] events  stream event outbox
-- KEYS[6] audit   stream the workspace's audit log: its first entry, workspace.created,
--                        names the organization it joins (membership never changes)
-- ARGV[1] now_ms          integer  clock of the gate, milliseconds
-- ARGV[2] workspace_id    string
-- ARGV[3] name            string
-- ARGV[4] organization_id string   "" when none
-- ARGV[5] webhook_secret  string   whsec_...
-- ARGV[6] signup_micros   integer  >= 0, credited as an "adjustment" row when > 0
-- ARGV[7] key_hash        string   sha256 hex of the first admin key
-- ARGV[8] key_id          string
-- ARGV[9..11] who          key id, person, address of the creator (lua/_audit.lua)
-- Replies:
--   {0, balance_micros}   created
--   {-1}                  a workspace with this id exists already (nothing changed)
-- Side effects: ledger row + transaction.created event when the signup credit is > 0.
local rcall = redis.call
local ws, wallet, keys, ledger, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local audit_log = KEYS[6]
local now_ms = tonumber(ARGV[1])
local workspace_id, name, org, secret = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local signup = tonumber(ARGV[6])
local key_hash, key_id = ARGV[7], ARGV[8]
local who = {ARGV[9] or 'gate', ARGV[10] or '', ARGV[11] or ''}

--!include _post.lua
--!include _audit.lua

if rcall('EXISTS', ws) == 1 then return {-1} end

rcall('HSET', ws, 'id', workspace_id, 'name', name, 'organization_id', org,
  'webhook_secret', secret, 'created_ms', now_ms)
rcall('HSET', wallet, 'balance', 0, 'reserved', 0, 'version', 1, 'status', 'active',
  'live', 0, 'ledger_ms', 0, 'event_seq', 0)
rcall('HSET', keys, key_hash, 'admin ' .. key_id)
audit(audit_log, now_ms, who, 'workspace.created', workspace_id, '{}',
  cjson.encode({name = name, organization_id = org, admin_key_id = key_id}))
local balance = 0
if signup > 0 then
  local _
  _, balance = post(wallet, ledger, events, now_ms, signup, 'adjustment', 'Signup credit',
    workspace_id, {})
end
return {0, balance}
