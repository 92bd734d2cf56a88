-- Include: one entry of a workspace's audit log, written by the script that makes the change.
-- The audit log records every change that is not a ledger row (settings, keys, holds), so
-- the entry and the change commit together or not at all.
--
-- Audit stream entries (id "<at ms>-<n>" by the gate's clock, never going backwards, as the
-- ledger's; one stream per workspace, trimmed only once archived): at (ms), action, key_id, person ("" unknown), ip, target,
-- before and after (JSON objects of the fields that changed; never a secret).
-- `who` is {key_id, person, ip} as the caller passed them in ARGV.

local function audit(stream, now_ms, who, action, target, before, after)
  local at = now_ms
  local last = rcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last then at = math.max(at, tonumber(string.match(last[1], '^(%d+)'))) end
  return rcall('XADD', stream, string.format('%d', at) .. '-*', 'at', now_ms, 'action', action,
    'key_id', who[1], 'person', who[2], 'ip', who[3], 'target', target, 'before', before,
    'after', after)
end
