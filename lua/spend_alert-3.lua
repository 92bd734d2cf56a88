-- spend_alert: raise a spending alert once per period (a month's threshold, a day's spike).
--
-- KEYS[1] alerts  hash    marker -> ms it fired ("spend:<YYYY-MM>:<pct>", "spike:<YYYY-MM-DD>")
-- KEYS[2] wallet  hash    event_seq for the event's seq
-- KEYS[3] events  stream  event outbox
-- ARGV[1] now_ms   integer
-- ARGV[2] marker   string   what fired; the same marker never fires twice
-- ARGV[3] type     string   event type (wallet.spend_threshold | wallet.spend_spike)
-- ARGV[4..n]       event data (name, value) pairs
-- Replies:
--   {0, event_id}  raised now
--   {1}            raised before (nothing changed)
-- Side effects: one event and its marker (a few markers a month per workspace).
local rcall = redis.call
local alerts, wallet, events = KEYS[1], KEYS[2], KEYS[3]
local now_ms, marker, etype = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local data = {}
for i = 4, #ARGV do data[#data + 1] = ARGV[i] end

--!include _post.lua

if rcall('HSETNX', alerts, marker, now_ms) == 0 then return {1} end
return {0, emit(events, wallet, now_ms, etype, data)}
