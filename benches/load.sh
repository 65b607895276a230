#!/usr/bin/env bash
# Load benchmark: guestgate vs nginx proxy_pass vs a bare hyper pass-through, all in front
# of the same upstream (an nginx serving a ~2 KB Confluence-shaped JSON body), driven by
# wrk in interleaved rounds. Prints req/s, p50/p99, CPU µs per request and RSS (medians
# over the rounds) and the ratios against nginx and the bare proxy.
#
#   bash benches/load.sh                 # DURATION=10 ROUNDS=3 CONNS=64 THREADS=2
#   DURATION=5 ROUNDS=5 bash benches/load.sh
#   BASELINE=/path/to/older/guestgate bash benches/load.sh   # also an older build, side by side
#   BASELINE=... BASELINE_POLICY_DIR=/older/checkout/policies ... # with the policies it shipped with
#   BASELINE=... BASELINE_PROFILE=/older/checkout/config/routes/confluence.toml ... # and its route profile
#   MODE=pinned bash benches/load.sh     # the proxy under test alone on CPU 0 with one worker,
#                                        # wrk and the upstream on CPU 1 (steadier on 2 cores;
#                                        # ROUNDS defaults to 5 there)
#   SKIP_HALF=1 SKIP_IDLE=1 ...          # peak load only
#   SKIP_PEAK=1 ...                      # idle connections only (RSS "before" is then a
#                                        # fresh process's, not one after the load)
#   CHART=docs/benchmarks.svg ...        # also the peak-load medians as an SVG bar chart
#   BASELINE=... ONLY="guestgate guestgate_before" ROUNDS=6 SKIP_HALF=1 SKIP_IDLE=1 ...
#                                        # a quick A/B of two builds: only these targets
#                                        # (of nginx bare bare_pool guestgate guestgate_guest
#                                        # guestgate_before), compared round by round
#   ONLY="bare bare_pool guestgate" ...   # bare_pool: the bare proxy on guestgate's own pool
#                                        # of upstream connections (benches/bare_proxy.rs),
#                                        # run only when named
#   COUNT=instructions DURATION=10 ...   # instead of timed rounds, user-space instructions per
#                                        # request of each target under callgrind, by stage
#                                        # (needs valgrind; BASELINE=/ONLY= as above)
#
# Each round runs the targets in turn, in reverse order every other round: on a shared VM
# the target that runs later in a round has often measured lower. With two targets and an
# even ROUNDS each runs first equally often (the middle one of an odd list never moves).
# Needs nginx and wrk (Debian: apt-get install nginx wrk). Loopback only; it starts its
# own processes on ports 18080-18096 and stops exactly those (by PID) when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
MODE=${MODE:-shared}
case "$MODE" in
  shared) PROXY_CPU=(); LOAD_CPU=(); PROXY_WORKERS=2; ROUNDS=${ROUNDS:-3} ;;
  pinned)
    [ "$(nproc)" -ge 2 ] || { echo "MODE=pinned needs 2 CPUs" >&2; exit 1; }
    PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); PROXY_WORKERS=1; ROUNDS=${ROUNDS:-5} ;;
  *) echo "MODE is shared or pinned" >&2; exit 1 ;;
esac
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}

for tool in nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "load.sh needs $tool (apt-get install nginx wrk)" >&2; exit 1; }
done

echo "== building release binaries"
cargo build --release --quiet --bin guestgate
BARE=$(cargo bench --no-run --bench bare_proxy 2>&1 | sed -n 's/.*Executable .*(\(.*bare_proxy-[^)]*\)).*/\1/p' | tail -1)
[ -x "$BARE" ] || { echo "cannot find the bare_proxy bench binary" >&2; exit 1; }
FIXED=$(cargo bench --no-run --bench fixed_rate 2>&1 | sed -n 's/.*Executable .*(\(.*fixed_rate-[^)]*\)).*/\1/p' | tail -1)
[ -x "$FIXED" ] || { echo "cannot find the fixed_rate bench binary" >&2; exit 1; }

WORK=$(mktemp -d /tmp/guestgate-load.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The upstream: a static Confluence content object with user objects, ~2 KB.
mkdir -p "$WORK/www/rest/api/content" "$WORK/up" "$WORK/px"
python3 - "$WORK/www/rest/api/content/101" <<'PY'
import json, sys
user = lambda n, k: {"type": "known", "username": n, "userKey": k, "displayName": n.title(),
                     "profilePicture": {"path": "/images/icons/profilepics/default.svg", "width": 48, "height": 48}}
doc = {"id": "101", "type": "page", "status": "current", "title": "Release plan",
       "space": {"id": 98305, "key": "ENG", "name": "Engineering", "type": "global"},
       "history": {"latest": True, "createdBy": user("alice", "k1"), "createdDate": "2026-10-01T09:30:00.000+02:00",
                   "contributors": {"publishers": {"users": [user("gary", "k2"), user("alice", "k1")]}}},
       "version": {"by": user("gary", "k2"), "when": "2026-11-20T17:04:11.000+01:00", "number": 7},
       "body": {"view": {"value": "<p>" + "Release notes and plans. " * 30 + "</p>", "representation": "view"}},
       "_links": {"webui": "/display/ENG/Release+plan", "base": "http://wiki", "self": "http://wiki/rest/api/content/101"}}
open(sys.argv[1], "w").write(json.dumps(doc))
PY
# nginx workers drop root privileges: the files they serve must be world-readable.
chmod 755 "$WORK"; chmod -R a+rX "$WORK/www"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log stderr error;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:18080; root $WORK/www; default_type application/json;
           location / { try_files \$uri =404; } }
}
CONF
cat > "$WORK/px/nginx.conf" <<CONF
worker_processes $PROXY_WORKERS;
pid $WORK/px/nginx.pid;
error_log stderr error;
daemon off;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000;
  upstream wiki { server 127.0.0.1:18080; keepalive 64; }
  server { listen 127.0.0.1:18082;
           location / { proxy_pass http://wiki; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
printf '%s' "load-benchmark-secret-0123456789abcdef" > "$WORK/secret"
cp policies/data.json "$WORK/data.json"
cat > "$WORK/guestgate.toml" <<CONF
[server]
listen = "127.0.0.1:18083"
max_connections = 20000
# The idle connections below must still be open when RSS is read (the default, 10 s, closes
# a keep-alive connection that long idle, as hyper's header timer did before parking).
header_read_timeout_secs = 120
workers = $PROXY_WORKERS
[upstream]
url = "http://127.0.0.1:18080"
[identity]
hs256_secret_file = "secret"
[policy]
dir = "$PWD/policies"
data = "data.json"
watch = false
[routes]
profile = "$PWD/config/routes/confluence.toml"
[admin]
listen = "127.0.0.1:18093"
[log]
decisions = "off"
CONF

ulimit -n 65536 2>/dev/null || true
"${LOAD_CPU[@]}" nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" & PIDS+=($!)
"${PROXY_CPU[@]}" nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" & PIDS+=($!); NGINX_PX=$!
"${PROXY_CPU[@]}" "$BARE" 127.0.0.1:18081 http://127.0.0.1:18080 2>/dev/null & PIDS+=($!); BARE_PID=$!
# The same bare proxy on guestgate's pool of upstream connections (target bare_pool, by ONLY=).
BARE_POOL=guestgate "${PROXY_CPU[@]}" "$BARE" 127.0.0.1:18085 http://127.0.0.1:18080 2>/dev/null & PIDS+=($!); BARE_POOL_PID=$!
RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0 RUST_LOG=warn "${PROXY_CPU[@]}" ./target/release/guestgate serve --config "$WORK/guestgate.toml" 2>"$WORK/gg.log" & PIDS+=($!); GG_PID=$!
PORTS=(18080 18081 18082 18083 18085)
if [ -n "${BASELINE:-}" ]; then
  # An older build of guestgate on the same config, as one more target ("guestgate_before").
  # A build older than its policy input may need the policies it shipped with.
  sed -e 's/127.0.0.1:18083/127.0.0.1:18084/' -e 's/127.0.0.1:18093/127.0.0.1:18094/' \
    -e "s|^dir = .*|dir = \"${BASELINE_POLICY_DIR:-$PWD/policies}\"|" \
    -e "s|^profile = .*|profile = \"${BASELINE_PROFILE:-$PWD/config/routes/confluence.toml}\"|" \
    "$WORK/guestgate.toml" > "$WORK/guestgate-before.toml"
  RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0 RUST_LOG=warn "${PROXY_CPU[@]}" "$BASELINE" serve --config "$WORK/guestgate-before.toml" 2>"$WORK/gg-before.log" & PIDS+=($!); BEFORE_PID=$!
  PORTS+=(18084)
fi
for port in "${PORTS[@]}"; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

REGULAR=$(./target/release/guestgate token --config "$WORK/guestgate.toml" --sub alice --ttl 86400)
GUEST=$(./target/release/guestgate token --config "$WORK/guestgate.toml" --sub gary --groups acme-guests --ttl 86400)
PATH_UNDER_TEST=/rest/api/content/101
curl -sf -H "Authorization: Bearer $GUEST" "http://127.0.0.1:18083$PATH_UNDER_TEST" | grep -q '"isExternalCollaborator":true' \
  || { echo "guestgate does not answer as expected:" >&2; cat "$WORK/gg.log" >&2; exit 1; }
if [ -n "${BASELINE:-}" ]; then
  curl -sf -H "Authorization: Bearer $REGULAR" "http://127.0.0.1:18084$PATH_UNDER_TEST" | grep -q '"isExternalCollaborator"' \
    || { echo "the BASELINE build does not answer as expected (BASELINE_POLICY_DIR?):" >&2; cat "$WORK/gg-before.log" >&2; exit 1; }
fi

HZ=$(getconf CLK_TCK)
# CPU ticks (user+system) of a process and its children threads/workers.
ticks() { local total=0; for p in "$@"; do
  for q in $p $(pgrep -P "$p" || true); do
    [ -r /proc/$q/stat ] && total=$((total + $(awk '{print $14 + $15}' /proc/$q/stat)))
  done; done; echo $total; }
rss_kb() { local total=0; for p in "$@"; do
  for q in $p $(pgrep -P "$p" || true); do
    [ -r /proc/$q/status ] && total=$((total + $(awk '/VmRSS/ {print $2}' /proc/$q/status)))
  done; done; echo $total; }

declare -A PORT=( [nginx]=18082 [bare]=18081 [bare_pool]=18085 [guestgate]=18083 [guestgate_guest]=18083 )
declare -A PID=( [nginx]=$NGINX_PX [bare]=$BARE_PID [bare_pool]=$BARE_POOL_PID [guestgate]=$GG_PID [guestgate_guest]=$GG_PID )
declare -A AUTH=( [nginx]="" [bare]="" [bare_pool]="" [guestgate]="$REGULAR" [guestgate_guest]="$GUEST" )
TARGETS=(nginx bare guestgate guestgate_guest)
if [ -n "${BASELINE:-}" ]; then
  PORT[guestgate_before]=18084; PID[guestgate_before]=$BEFORE_PID; AUTH[guestgate_before]="$REGULAR"
  TARGETS+=(guestgate_before)
fi
if [ -n "${ONLY:-}" ]; then
  read -ra TARGETS <<< "$ONLY"
  [ "${#TARGETS[@]}" -gt 0 ] || { echo "ONLY names no target" >&2; exit 1; }
  declare -A seen=()
  for t in "${TARGETS[@]}"; do
    [[ "$t" =~ ^[a-z_]+$ && -n "${PORT[$t]:-}" ]] \
      || { echo "ONLY: unknown target $t (BASELINE= for guestgate_before)" >&2; exit 1; }
    [ -z "${seen[$t]:-}" ] || { echo "ONLY: $t named twice" >&2; exit 1; }
    seen[$t]=1
  done
fi
# The targets in a round's order: as listed in odd rounds, reversed in even ones (an even
# ROUNDS puts each of two targets first equally often).
round_order() {
  if (( $1 % 2 == 1 )); then printf '%s\n' "${TARGETS[@]}"; else printf '%s\n' "${TARGETS[@]}" | tac; fi
}

if [ "${COUNT:-}" = instructions ]; then
  # Instructions per request, counted by callgrind for each target in turn (a process of
  # its own on port 18086, admin 18096), in all and by stage. A count does not move with
  # what else the machine runs, as CPU time does: the A/B of a change worth a few hundred
  # nanoseconds, lost in the noise of timed rounds, shows here. It counts user-space work
  # only (the kernel's TCP is most of the CPU time), and under valgrind SHA-256 runs
  # without the CPU's SHA extensions.
  command -v valgrind >/dev/null || { echo "COUNT=instructions needs valgrind (apt-get install valgrind)" >&2; exit 1; }
  sed -e 's/127.0.0.1:18083/127.0.0.1:18086/' -e 's/127.0.0.1:18093/127.0.0.1:18096/' \
    "$WORK/guestgate.toml" > "$WORK/guestgate-count.toml"
  [ -z "${BASELINE:-}" ] || sed -e 's/127.0.0.1:18084/127.0.0.1:18086/' -e 's/127.0.0.1:18094/127.0.0.1:18096/' \
    "$WORK/guestgate-before.toml" > "$WORK/guestgate-before-count.toml"
  echo "== instructions per request (callgrind), ${DURATION}s of 4 connections per target"
  for t in "${TARGETS[@]}"; do
    case "$t" in
      bare) run=("$BARE" 127.0.0.1:18086 http://127.0.0.1:18080) ;;
      bare_pool) run=(env BARE_POOL=guestgate "$BARE" 127.0.0.1:18086 http://127.0.0.1:18080) ;;
      guestgate|guestgate_guest) run=(./target/release/guestgate serve --config "$WORK/guestgate-count.toml") ;;
      guestgate_before) run=("$BASELINE" serve --config "$WORK/guestgate-before-count.toml") ;;
      *) echo "COUNT=instructions: $t is not counted (nginx forks its workers)"; continue ;;
    esac
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$t" "${run[@]}" 2>"$WORK/callgrind-$t.log" & pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/18086) 2>/dev/null && break; sleep 0.1; done
    header=()
    [ -n "${AUTH[$t]}" ] && header=(-H "Authorization: Bearer ${AUTH[$t]}")
    "${LOAD_CPU[@]}" wrk -t1 -c4 -d3s "${header[@]}" "http://127.0.0.1:18086$PATH_UNDER_TEST" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    out=$("${LOAD_CPU[@]}" wrk -t1 -c4 -d"${DURATION}s" "${header[@]}" "http://127.0.0.1:18086$PATH_UNDER_TEST")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    # The dump taken after the zeroing holds the counted stretch: the largest of the files.
    dump=$(for f in "$WORK/callgrind.$t".*; do
      echo "$(callgrind_annotate --threshold=100 "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}') $f"
    done | sort -n | tail -1 | cut -d' ' -f2)
    callgrind_annotate --threshold=100 --inclusive=yes "$dump" 2>/dev/null | python3 -c '
import re, sys
name, requests = sys.argv[1], int(sys.argv[2])
# Inclusive counts: a stage includes what it calls. A function the compiler inlined into
# its caller has no line of its own (shown as -).
stages = [
    ("the whole process", "PROGRAM TOTALS"),
    ("the request future (Pipeline::serve)", "guestgate::pipeline::Pipeline::serve::{{closure}}"),
    ("  accept", "guestgate::pipeline::accept::accept"),
    ("  identify (Verifier::verify)", "guestgate::identity::verify::Verifier::verify"),
    ("  classify (judge::admit)", "guestgate::pipeline::judge::admit"),
    ("  decide", "guestgate::pipeline::decide::decide"),
    ("  forward (preparing the request)", "guestgate::pipeline::forward::forward"),
    ("  rewrite (the JSON scan and splice)", "guestgate::pipeline::rewrite::json::rewrite"),
    ("the wiki connection task (hyper client)", "guestgate::http::pool::OriginPool<B>::connect::{{closure}}::{{closure}}"),
]
best = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) ", line)
    if not m:
        continue
    count = int(m.group(1).replace(",", ""))
    for _, pattern in stages:
        if re.search(re.escape(pattern) + r"( |$)", line):
            best[pattern] = max(best.get(pattern, 0), count)
print(f"{name}: {requests} requests")
for label, pattern in stages:
    if pattern in best or pattern == "PROGRAM TOTALS":
        value = f"{best.get(pattern, 0) / requests:>9.0f}" if pattern in best else f"{chr(45):>9}"
        if pattern != "PROGRAM TOTALS" and not name.startswith("guestgate"):
            continue
        print(f"  {label:<44}{value}")
' "$t" "$requests"
  done
  exit 0
fi

if [ -n "${SKIP_PEAK:-}" ]; then SKIP_HALF=1; fi
if [ -z "${SKIP_PEAK:-}" ]; then
echo "== $ROUNDS interleaved rounds of ${DURATION}s, $CONNS connections, $THREADS wrk threads, $(nproc) cores, MODE=$MODE"
for round in $(seq "$ROUNDS"); do
  for t in $(round_order "$round"); do
    header=()
    [ -n "${AUTH[$t]}" ] && header=(-H "Authorization: Bearer ${AUTH[$t]}")
    before=$(ticks "${PID[$t]}")
    out=$("${LOAD_CPU[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${header[@]}" "http://127.0.0.1:${PORT[$t]}$PATH_UNDER_TEST")
    after=$(ticks "${PID[$t]}")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
    cpu_us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    echo "$t $rps $p50 $p99 $cpu_us $(rss_kb "${PID[$t]}") ${non2xx:-0}" >> "$WORK/results"
    echo "round $round  $t: $rps req/s, p50 $p50, p99 $p99, ${cpu_us} µs CPU/req, non-2xx ${non2xx:-0}"
  done
done

echo
python3 - "$WORK/results" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, rps, p50, p99, cpu, rss, bad = line.split()
    unit = lambda s: float(s[:-2]) * 1000 if s.endswith("ms") else float(s[:-2]) if s.endswith("us") else float(s[:-1]) * 1e6
    rows[t].append((float(rps), unit(p50), unit(p99), float(cpu), int(rss), int(bad)))
med = {t: [statistics.median(col) for col in zip(*v)] for t, v in rows.items()}
print(f"{'target':<16}{'req/s':>10}{'p50 µs':>9}{'p99 µs':>9}{'CPU µs/req':>12}{'RSS MB':>8}{'non-2xx':>9}")
for t, m in med.items():
    print(f"{t:<16}{m[0]:>10.0f}{m[1]:>9.0f}{m[2]:>9.0f}{m[3]:>12.1f}{m[4]/1024:>8.1f}{m[5]:>9.0f}")
print()
for t in [t for t in ("guestgate", "guestgate_guest", "guestgate_before") if t in med]:
    if "nginx" not in med or "bare" not in med:
        break
    print(f"{t}: {med[t][0]/med['nginx'][0]:.2f}x nginx req/s, {med[t][0]/med['bare'][0]:.2f}x bare proxy req/s, "
          f"CPU/req {med[t][3]/med['nginx'][3]:.2f}x nginx, {med[t][3]/med['bare'][3]:.2f}x bare proxy, "
          f"p99 +{med[t][2]-med['nginx'][2]:.0f} µs vs nginx")
# Paired by round: the two builds ran within seconds of each other, so their difference in
# a round is steadier than the difference of their medians.
for a, b in (("guestgate", "guestgate_before"), ("guestgate_guest", "guestgate"), ("bare_pool", "bare")):
    if a in rows and b in rows:
        diffs = [x[3] - y[3] for x, y in zip(rows[a], rows[b])]
        lower = sum(d < 0 for d in diffs)
        print(f"{a} vs {b}, round by round: CPU/req lower in {lower} of {len(diffs)} rounds, "
              f"median difference {statistics.median(diffs):+.1f} µs ({', '.join(f'{d:+.1f}' for d in diffs)})")
# CPU per request against each bare proxy, as a ratio within each round.
for base in ("bare", "bare_pool"):
    for t in [t for t in ("guestgate", "guestgate_guest", "guestgate_before") if t in rows and base in rows]:
        ratios = [x[3] / y[3] for x, y in zip(rows[t], rows[base])]
        print(f"{t} / {base}, CPU/req round by round: median {statistics.median(ratios):.2f}x "
              f"({', '.join(f'{r:.2f}' for r in ratios)})")
PY
if [ -n "${CHART:-}" ]; then
  # The medians as one picture: req/s and CPU µs per request, one bar each per target.
  python3 - "$WORK/results" "$CHART" "$MODE" <<'PY'
import statistics, sys, collections, html
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, rps, p50, p99, cpu, rss, bad = line.split()
    rows[t].append((float(rps), float(cpu)))
med = {t: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for t, v in rows.items()}
w, bar, gap, left = 760, 22, 10, 150
panels = [("requests per second (more is better)", 0, "#4a7ebb"), ("proxy CPU µs per request (less is better)", 1, "#c0504d")]
height = 40 + len(panels) * (30 + len(med) * (bar + gap)) + 20
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="13">',
       f'<text x="10" y="22" font-size="15" font-weight="bold">benches/load.sh MODE={html.escape(sys.argv[3])}: medians of {len(next(iter(rows.values())))} rounds</text>']
y = 40
for title, i, color in panels:
    out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{html.escape(title)}</text>')
    y += 24
    top = max(m[i] for m in med.values())
    for t, m in med.items():
        length = (w - left - 90) * m[i] / top
        out.append(f'<text x="10" y="{y + 16}">{html.escape(t)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{color}"/>')
        label = f"{m[i]:,.0f}" if i == 0 else f"{m[i]:.1f}"
        out.append(f'<text x="{left + length + 6:.1f}" y="{y + 16}">{label}</text>')
        y += bar + gap
    y += 6
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("chart written to", sys.argv[2])
PY
fi
fi

if [ -z "${SKIP_HALF:-}" ]; then
# Latency at half load: every target at the same fixed rate, half the lowest peak measured
# above (so each runs at or below half of its own peak), open loop (fixed_rate.rs).
HALF=$(python3 - "$WORK/results" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rows[line.split()[0]].append(float(line.split()[1]))
print(int(min(statistics.median(v) for v in rows.values()) / 2))
PY
)
echo
echo "== latency at a fixed $HALF req/s (half the lowest peak), $ROUNDS interleaved rounds of ${DURATION}s, 32 connections"
for round in $(seq "$ROUNDS"); do
  for t in $(round_order "$round"); do
    header=()
    [ -n "${AUTH[$t]}" ] && header=(--header "Authorization: Bearer ${AUTH[$t]}")
    before=$(ticks "${PID[$t]}")
    out=$("${LOAD_CPU[@]}" "$FIXED" --url "http://127.0.0.1:${PORT[$t]}$PATH_UNDER_TEST" --rate "$HALF" --duration "$DURATION" --connections 32 "${header[@]}")
    after=$(ticks "${PID[$t]}")
    echo "$t $out $((after - before))" >> "$WORK/half"
    echo "round $round  $t: $out"
  done
done
python3 - "$WORK/half" "$HZ" <<'PY'
import json, statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, rest = line.split(" ", 1)
    js, ticks = rest.rsplit(" ", 1)
    d = json.loads(js)
    rows[t].append((d["p50_us"], d["p99_us"], d["p999_us"], d["errors"], int(ticks) / int(sys.argv[2]) * 1e6 / max(d["ok"], 1)))
med = {t: [statistics.median(c) for c in zip(*v)] for t, v in rows.items()}
print(f"{'target':<16}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}{'errors':>8}{'CPU µs/req':>12}")
for t, m in med.items():
    print(f"{t:<16}{m[0]:>9.0f}{m[1]:>9.0f}{m[2]:>10.0f}{m[3]:>8.0f}{m[4]:>12.1f}")
for t in [t for t in ("guestgate", "guestgate_guest", "guestgate_before") if t in med]:
    if "nginx" not in med or "bare" not in med:
        break
    print(f"{t}: added p99 {med[t][1]-med['nginx'][1]:+.0f} µs vs nginx, {med[t][1]-med['bare'][1]:+.0f} µs vs the bare proxy")
PY

fi

if [ -n "${SKIP_IDLE:-}" ]; then exit 0; fi
echo
echo "== RSS with $IDLE_CONNS idle keep-alive connections (each answered once, then left open)"
# The holder opens the connections one after another; each sends one request (guestgate
# answers 401, the others pass it to the upstream, which answers 404) and then stays open,
# idle, as a browser's or a pooling client's keep-alive connection would.
idle_rss() { # name port pid
  rm -f "$WORK/idle-ready"
  local before after holder
  before=$(rss_kb "$3")
  python3 - "$IDLE_CONNS" "$2" "$WORK/idle-ready" <<'PY' &
import socket, sys, time
conns = []
for _ in range(int(sys.argv[1])):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        s.sendall(b"GET /display/ENG/Home HTTP/1.1\r\nHost: wiki\r\n\r\n")
        conns.append(s)
    except OSError as e:
        print("stopped at", len(conns), "connections:", e); break
answered = sum(1 for s in conns if s.recv(4096).startswith(b"HTTP/1.1 "))
open(sys.argv[3], "w").close()
time.sleep(1.5)
def is_open(s):
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
still = sum(1 for s in conns if is_open(s))
print(f"  {len(conns)} connections opened, {answered} answered, {still} still open when RSS was read")
time.sleep(4.5)
PY
  holder=$!
  for _ in $(seq 600); do [ -e "$WORK/idle-ready" ] && break; sleep 0.1; done
  sleep 1
  after=$(rss_kb "$3")
  echo "$1 $before $after" >> "$WORK/idle"
  printf '  %-10s RSS %4d MB before, %4d MB with the idle connections (%s KiB per connection)\n' \
    "$1" $((before / 1024)) $((after / 1024)) "$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')"
  wait "$holder" || true
}
for t in "${TARGETS[@]}"; do
  # The guest shares the regular user's process: its idle connections are the same.
  [ "$t" = guestgate_guest ] || idle_rss "$t" "${PORT[$t]}" "${PID[$t]}"
done
