#!/usr/bin/env bash
# Opt-in end-to-end check of docker-compose.yml, for a machine with a Docker engine and a
# registry to pull redis:7 and postgres:16 from (CI's machines have neither; CI validates the
# file against the Compose specification's schema instead: tests/test_compose.py).
#
# Starts the stack, makes a call, recreates every container, and checks that every ledger row
# is still there: the balance in Redis's AOF volume, the archived rows in PostgreSQL's volume.
set -euo pipefail
cd "$(dirname "$0")/.."
export GATE_PLATFORM_KEY=${GATE_PLATFORM_KEY:-compose-check-platform-key-0123456789}
export POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-compose-check-password}
export COMPOSE_PROJECT_NAME=gate-compose-check
BASE=http://127.0.0.1:8080
PLATFORM="Authorization: Bearer $GATE_PLATFORM_KEY"
step() { printf '\n== %s\n' "$*"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
trap 'docker compose logs --tail 50 gate || true; docker compose down -v' EXIT

wait_ready() {
  for _ in $(seq 1 120); do
    curl -fsS "$BASE/readyz" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "gate did not become ready in 120 s" >&2; return 1
}

step "building and starting redis, postgres and gate"
docker compose up -d --build
wait_ready

step "a workspace, \$10 of credit and one 60 s call"
ws=$(curl -fsS -X POST "$BASE/v1/workspaces" -H "$PLATFORM" -H 'Content-Type: application/json' -d '{"name":"compose-check"}')
ws_id=$(echo "$ws" | json "['id']")
admin=$(echo "$ws" | json "['key']")
switch=$(curl -fsS -X POST "$BASE/v1/workspaces/$ws_id/keys" -H "$PLATFORM" -H 'Content-Type: application/json' -d '{"role":"switch"}' | json "['key']")
curl -fsS -X POST "$BASE/v1/workspaces/$ws_id/adjustments" -H "$PLATFORM" -H 'Content-Type: application/json' \
  -d '{"amount_usd":"10","type":"adjustment","description":"compose check"}' >/dev/null
curl -fsS -X POST "$BASE/v1/calls" -H "Authorization: Bearer $switch" -H 'Content-Type: application/json' \
  -d '{"call_id":"compose-1","direction":"outbound","from":"+14155550100","to":"+14155550123"}' >/dev/null
curl -fsS -X POST "$BASE/v1/calls/compose-1/end" -H "Authorization: Bearer $switch" -H 'Content-Type: application/json' \
  -d '{"duration_s":60}' >/dev/null
before=$(curl -fsS "$BASE/v1/wallet/transactions?limit=100" -H "Authorization: Bearer $admin")
rows_before=$(echo "$before" | json "['data'].__len__()")
balance_before=$(curl -fsS "$BASE/v1/wallet" -H "Authorization: Bearer $admin" | json "['balance_usd']")
echo "rows: $rows_before, balance: $balance_before"

step "waiting for the archiver to copy the rows to PostgreSQL"
for _ in $(seq 1 60); do
  archived=$(docker compose exec -T postgres psql -U gate -d gate -tAc \
    "select count(*) from ledger_rows where workspace_id = '$ws_id'" 2>/dev/null || echo 0)
  [ "${archived:-0}" -ge "$rows_before" ] && break
  sleep 1
done
echo "archived: $archived of $rows_before"
[ "$archived" -ge "$rows_before" ]

step "recreating every container (an upgrade)"
docker compose up -d --build --force-recreate
wait_ready

after=$(curl -fsS "$BASE/v1/wallet/transactions?limit=100" -H "Authorization: Bearer $admin")
rows_after=$(echo "$after" | json "['data'].__len__()")
balance_after=$(curl -fsS "$BASE/v1/wallet" -H "Authorization: Bearer $admin" | json "['balance_usd']")
archived_after=$(docker compose exec -T postgres psql -U gate -d gate -tAc \
  "select count(*) from ledger_rows where workspace_id = '$ws_id'")
echo "rows: $rows_after (before $rows_before), balance: $balance_after (before $balance_before), archived: $archived_after"
[ "$rows_after" = "$rows_before" ] && [ "$balance_after" = "$balance_before" ] && [ "$archived_after" -ge "$rows_before" ]
docker compose exec -T gate gate check
step "compose check passed: every ledger row survived the recreate"
