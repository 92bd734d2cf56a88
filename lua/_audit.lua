-- Include: one entry of a workspace's audit log, written by the script that makes the change.
-- The audit log records every change that is not a ledger row (settings, keys, holds), so
-- the entry and the change commit together or not at all.
--
-- Audit stream entries (id from Redis, one stream per workspace, never trimmed in Redis until
-- archived): at (ms, the gate's clock), action, key_id, person ("" unknown), ip, target,
-- before and after (JSON objects of the fields that changed; never a secret).
-- `who` is {key_id, person, ip} as the caller passed them in ARGV.

local function audit(stream, now_ms, who, action, target, before, after)
  return rcall('XADD', stream, '*', 'at', now_ms, 'action', action, 'key_id', who[1],
    'person', who[2], 'ip', who[3], 'target', target, 'before', before, 'after', after)
end
