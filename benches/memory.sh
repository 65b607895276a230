#!/usr/bin/env bash
# Memory under large bodies: 48 guests fetch a 7.5 MB search listing (filtered, so held
# whole) while 48 regular users fetch a 7.5 MB content object (tagged, held whole), all at
# once, ROUNDS times in a row. Prints the answers by status and the gateway's peak RSS
# (VmHWM), which must stay well inside a 256 MiB container limit — the attack that took an
# unbudgeted build to 541 MB. With BASELINE=/path/to/older/guestgate the same attack runs
# against that build too, side by side.
#
#   bash benches/memory.sh               # CLIENTS=48 ROUNDS=3
#   BASELINE=/path/to/older/guestgate BASELINE_POLICY_DIR=... BASELINE_PROFILE=... bash benches/memory.sh
#   BUDGET=33554432 bash benches/memory.sh   # another server.buffer_budget_bytes
#
# Needs nginx and curl. Loopback only: ports 18180-18194, processes stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-48}
ROUNDS=${ROUNDS:-3}
for tool in nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "memory.sh needs $tool" >&2; exit 1; }
done
echo "== building the release binary"
cargo build --release --quiet --bin guestgate

WORK=$(mktemp -d /tmp/guestgate-memory.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/www/rest/api/content" "$WORK/up"
python3 - "$WORK/www" tests/fixtures/search.json tests/fixtures/content.json <<'PY'
import json, sys
www, search, content = sys.argv[1:]
target = 7_500_000
s = json.load(open(search))
items = s["results"]
results = []
while len(json.dumps(results)) < target:
    results.extend(items)
s["results"], s["size"], s["totalSize"] = results, len(results), len(results)
open(f"{www}/search.json", "w").write(json.dumps(s))
c = json.load(open(content))
user = {"type": "known", "username": "gary", "userKey": "k2", "displayName": "Gary"}
c["history"]["contributors"] = {"publishers": {"users": []}}
users = c["history"]["contributors"]["publishers"]["users"]
while len(json.dumps(c)) < target:
    users.extend([user] * 1000)
open(f"{www}/rest/api/content/101", "w").write(json.dumps(c))
PY
chmod 755 "$WORK"; chmod -R a+rX "$WORK/www"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log stderr error;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18180; root $WORK/www; default_type application/json;
           location /rest/api/search { try_files /search.json =404; }
           location / { try_files \$uri =404; } }
}
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" & PIDS+=($!)

printf '%s' "memory-benchmark-secret-0123456789abcdef" > "$WORK/secret"
cp policies/data.json "$WORK/data.json"
config() { # port admin_port policy_dir profile
  cat <<CONF
[server]
listen = "127.0.0.1:$1"
request_timeout_secs = 120
$5
[upstream]
url = "http://127.0.0.1:18180"
[identity]
hs256_secret_file = "secret"
[policy]
dir = "$3"
data = "data.json"
watch = false
[routes]
profile = "$4"
[rewrite]
max_body_bytes = 8388608
[admin]
listen = "127.0.0.1:$2"
[log]
decisions = "off"
CONF
}
BUDGET_LINE=${BUDGET:+buffer_budget_bytes = $BUDGET}
config 18183 18193 "$PWD/policies" "$PWD/config/routes/confluence.toml" "$BUDGET_LINE" > "$WORK/guestgate.toml"
TARGETS=("guestgate 18183 ./target/release/guestgate $WORK/guestgate.toml")
if [ -n "${BASELINE:-}" ]; then
  config 18184 18194 "${BASELINE_POLICY_DIR:-$PWD/policies}" \
    "${BASELINE_PROFILE:-$PWD/config/routes/confluence.toml}" > "$WORK/before.toml"
  TARGETS+=("guestgate_before 18184 $BASELINE $WORK/before.toml")
fi
REGULAR=$(./target/release/guestgate token --config "$WORK/guestgate.toml" --sub alice --ttl 86400)
GUEST=$(./target/release/guestgate token --config "$WORK/guestgate.toml" --sub gary --groups acme-guests --ttl 86400)

for target in "${TARGETS[@]}"; do
  read -r name port binary cfg <<<"$target"
  binary=$(realpath "$binary")
  (cd "$WORK" && RUST_LOG=error exec "$binary" serve --config "$cfg") 2>"$WORK/$name.log" & pid=$!
  PIDS+=($pid)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  : > "$WORK/$name.codes"
  for _ in $(seq "$ROUNDS"); do
    clients=()
    for _ in $(seq "$CLIENTS"); do
      curl -s -o /dev/null -w '%{http_code} listing\n' -H "Authorization: Bearer $GUEST" \
        "http://127.0.0.1:$port/rest/api/search?cql=type=page" >> "$WORK/$name.codes" & clients+=($!)
      curl -s -o /dev/null -w '%{http_code} content\n' -H "Authorization: Bearer $REGULAR" \
        "http://127.0.0.1:$port/rest/api/content/101" >> "$WORK/$name.codes" & clients+=($!)
    done
    wait "${clients[@]}" || true
  done
  if kill -0 "$pid" 2>/dev/null; then
    peak=$(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' "/proc/$pid/status")
    kill "$pid"
  else
    peak="none: the process died ($(tail -2 "$WORK/$name.log" | tr '\n' ' '))"
  fi
  echo "== $name: peak RSS $peak; answers:"
  sort "$WORK/$name.codes" | uniq -c | sed 's/^/   /'
done
