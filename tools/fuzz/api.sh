#!/usr/bin/env bash
# A bounded schema fuzz of the API (schemathesis, from PyPI): a real `krya serve` on a free
# port with the tiny test model, a signed-in user, a few examples per operation. It fails on
# any 5xx and on any answer that does not match its documented schema.
#   tools/fuzz/api.sh [path/to/krya] [examples per operation]
set -euo pipefail
cd "$(dirname "$0")/../.."
KRYA=${1:-${CARGO_TARGET_DIR:-target}/debug/krya}
EXAMPLES=${2:-15}
ST=${SCHEMATHESIS:-/var/tmp/krya-st/bin/schemathesis}
if [ ! -x "$ST" ]; then
  python3 -m venv "$(dirname "$(dirname "$ST")")"
  "$(dirname "$ST")/pip" install --quiet 'schemathesis>=4,<5'
fi
DATA=$(mktemp -d)
LOG="$DATA/serve.log"
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
# Limits off: the fuzzer sends many requests from one address.
KRYA_HOME="$DATA" HF_HUB_OFFLINE=1 HF_ENDPOINT=http://127.0.0.1:1 \
KRYA__LIMITS__REGISTER_PER_HOUR=0 KRYA__LIMITS__LOGIN_PER_MINUTE=0 \
KRYA__LIMITS__UPLOADS_PER_MINUTE=0 KRYA__LIMITS__SUBMISSIONS_PER_MINUTE=0 \
  "$KRYA" serve --listen 127.0.0.1:0 --data-dir "$DATA" \
  --model tiny=crates/krya-engine/tests/golden/turbo >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 100); do
  BASE=$(sed -n 's/^Krya listening on //p' "$LOG" | head -1)
  [ -n "$BASE" ] && break
  sleep 0.2
done
[ -n "${BASE:-}" ] || { cat "$LOG"; echo "krya serve did not start"; exit 1; }
TOKEN=$(curl -sf "$BASE/api/auth/register" -H 'content-type: application/json' \
  -d '{"email":"fuzz@example.com","password":"fuzz password","name":"Fuzz"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
"$ST" run "$BASE/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  -H "Authorization: Bearer $TOKEN" \
  -n "$EXAMPLES" --request-timeout 20 --generation-deterministic \
  --exclude-path /api/auth/logout --exclude-path /api/events
