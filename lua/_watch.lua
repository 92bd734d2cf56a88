-- Include: the wallet's watch on available money, run by every script that changes it.
-- watch() decides, inside the debiting script, whether the change crossed the workspace's
-- auto-recharge or low-balance threshold, and records what must happen outside Redis:
--   * auto-recharge: available < ar_threshold and no charge in flight or backing off
--     (ar_state idle) -> ar_state "charging" with a new attempt number, and a
--     wallet.auto_recharge_started event. gate/wallet/automation.py charges the card
--     (lua/auto_recharge_claim-3.lua, auto_recharge_settle-7.lua, auto_recharge_fail-3.lua).
--     At most one attempt exists per wallet, so hundreds of debits crossing at once fire once.
--   * low-balance alert, edge-triggered: available < lb_threshold while lb_state is not
--     "triggered" -> lb_state "triggered", one wallet.low_balance event and one mail job;
--     available back at or above the threshold re-arms it. Available <= 0 -> one
--     wallet.depleted event and mail job, re-armed when available is above zero again.
-- Workspaces with neither feature enabled pay one HMGET per script run and change nothing.
--
-- Workspace hash fields read: ar_enabled, ar_threshold_micros, lb_enabled,
--   lb_threshold_micros, lb_email; switch_webhook_url in the same read, for watch_url().
-- Wallet hash fields written:
--   ar_state    idle | charging | failed (absent = idle)
--   ar_seq      attempt counter; ar_attempt the attempt in flight (charging/failed)
--   ar_since    ms the attempt started
--   lb_state    armed | triggered (absent = armed); lb_zero 1 while depleted was mailed
--   mail:<n>    a mail job "<kind>|<at ms>|<available>|<balance>|<detail>", sent and deleted
--               by gate/delivery/mail.py; mail_seq numbers them, mail_pending counts them
-- Needs `rcall` and `emit` (lua/_post.lua) defined before the include.

local watch_cfg = nil  -- the workspace's settings, read once per script run
-- 1 once this script run gave gate/wallet/automation.py work (a recharge attempt or a mail
-- job): call scripts reply it, so Gate wakes the automation worker only then.
local watch_fired = 0

local function watch_settings(ws)
  if watch_cfg == nil then
    local s = rcall('HMGET', ws, 'ar_enabled', 'ar_threshold_micros', 'lb_enabled',
      'lb_threshold_micros', 'lb_email', 'switch_webhook_url')
    watch_cfg = {ar = nil, lb = nil, email = s[5] or nil, url = s[6] and 1 or 0}
    if s[1] == '1' then watch_cfg.ar = tonumber(s[2]) end
    if s[3] == '1' then watch_cfg.lb = tonumber(s[4]) end
  end
  return watch_cfg
end

-- Whether the workspace has a webhook URL of its own, as this run read it with its settings:
-- 1 or 0, -1 when the run did not read them (call scripts reply it, so Gate wakes its
-- outbox for a workspace's events only when they have somewhere to go).
local function watch_url()
  if watch_cfg == nil then return -1 end
  return watch_cfg.url
end

local function fmt(n)
  return string.format('%.0f', n)  -- integers as digits, never "1e+15"
end

-- Queue one alert mail for the workspace's alert address (no address: no mail).
local function queue_mail(ws, wallet, now_ms, kind, avail, balance, detail)
  watch_fired = 1
  if not watch_settings(ws).email then return end
  local n = rcall('HINCRBY', wallet, 'mail_seq', 1)
  rcall('HSET', wallet, 'mail:' .. n,
    kind .. '|' .. fmt(now_ms) .. '|' .. fmt(avail) .. '|' .. fmt(balance) .. '|' .. detail)
  rcall('HINCRBY', wallet, 'mail_pending', 1)
end

-- Start a new auto-recharge attempt; the caller checked that none is in flight.
local function start_recharge(wallet, events, now_ms, avail, threshold)
  watch_fired = 1
  local attempt = rcall('HINCRBY', wallet, 'ar_seq', 1)
  rcall('HSET', wallet, 'ar_state', 'charging', 'ar_attempt', attempt, 'ar_since', now_ms)
  rcall('HDEL', wallet, 'ar_owner', 'ar_until', 'ar_amount', 'ar_next')
  rcall('HINCRBY', wallet, 'version', 1)
  emit(events, wallet, now_ms, 'wallet.auto_recharge_started',
    {'attempt', attempt, 'available_micros', fmt(avail), 'threshold_micros', fmt(threshold)})
end

-- Look at available money after a change; fire what crossed. Returns nothing.
local function watch(ws, wallet, events, now_ms)
  local cfg = watch_settings(ws)
  if not cfg.ar and not cfg.lb then return end
  local w = rcall('HMGET', wallet, 'balance', 'reserved', 'ar_state', 'lb_state', 'lb_zero')
  local balance = tonumber(w[1])
  local avail = balance - tonumber(w[2])
  if cfg.lb then
    if avail < cfg.lb then
      if w[4] ~= 'triggered' then
        rcall('HSET', wallet, 'lb_state', 'triggered')
        rcall('HINCRBY', wallet, 'version', 1)
        emit(events, wallet, now_ms, 'wallet.low_balance', {'available_micros', fmt(avail),
          'balance_micros', fmt(balance), 'threshold_micros', fmt(cfg.lb)})
        queue_mail(ws, wallet, now_ms, 'low_balance', avail, balance, fmt(cfg.lb))
      end
    elseif w[4] == 'triggered' then
      rcall('HSET', wallet, 'lb_state', 'armed')
      rcall('HINCRBY', wallet, 'version', 1)
    end
    if avail <= 0 then
      if not w[5] then
        rcall('HSET', wallet, 'lb_zero', 1)
        if rcall('HSETNX', wallet, 'depleted', 1) == 1 then
          emit(events, wallet, now_ms, 'wallet.depleted', {'available_micros', fmt(avail),
            'balance_micros', fmt(balance)})
        end
        queue_mail(ws, wallet, now_ms, 'depleted', avail, balance, '')
      end
    elseif w[5] then
      rcall('HDEL', wallet, 'lb_zero')
    end
  end
  if cfg.ar and avail < cfg.ar and (not w[3] or w[3] == 'idle') then
    start_recharge(wallet, events, now_ms, avail, cfg.ar)
  end
end
