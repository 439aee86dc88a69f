#!/usr/bin/env bash
# Probe-engine CPU: qu's native TCP and HTTP probes against Debian's
# prometheus-blackbox-exporter probing the same loopback targets in the same
# run. Prints CPU milliseconds per probe for each and their ratio.
#
#   bash tests/bench/blackbox.sh            # installs what it needs (as root)
#
# qu's number is the whole daemon's CPU (event loop and consensus included)
# divided by the probes it ran; the exporter's is its process's CPU divided
# by the /probe requests served. Clock ticks are 10 ms: runs are long enough
# for that not to matter.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v prometheus-blackbox-exporter >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-blackbox-exporter curl
fi
cargo build -q --release -p qu-cli
QU=$PWD/target/release/qu
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ms() { awk '{print ($14+$15)*10}' "/proc/$1/stat"; }   # utime+stime, 100 ticks/s

# Targets: an HTTP/1.1 server that keeps connections alive, as most real
# targets do (it also serves as the TCP target).
http_port=$(free_port)
(cd "$work" && exec python3 -c '
import http.server, sys
http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
http.server.ThreadingHTTPServer.request_queue_size = 4096   # the default backlog of 5 drops SYNs at 1,000 probes/s
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
' "$http_port" >/dev/null 2>&1) &
pids+=($!)
sleep 0.5
http_url="http://127.0.0.1:$http_port/"
tcp_target="127.0.0.1:$http_port"

# --- blackbox exporter ---------------------------------------------------
bb_port=$(free_port)
cat > "$work/bb.yml" <<YAML
modules:
  http_2xx: {prober: http, timeout: 5s, http: {preferred_ip_protocol: ip4}}
  tcp_connect: {prober: tcp, timeout: 5s, tcp: {preferred_ip_protocol: ip4}}
YAML
prometheus-blackbox-exporter --config.file="$work/bb.yml" --web.listen-address="127.0.0.1:$bb_port" >/dev/null 2>&1 &
bb_pid=$!
pids+=($bb_pid)
sleep 1
bb_run() { # module target count
  local before after
  before=$(cpu_ms "$bb_pid")
  for _ in $(seq "$3"); do curl -s -o /dev/null "http://127.0.0.1:$bb_port/probe?module=$1&target=$2"; done
  after=$(cpu_ms "$bb_pid")
  echo "$(( after - before )) $3"
}
read -r bb_tcp_ms bb_tcp_n < <(bb_run tcp_connect "$tcp_target" 3000)
read -r bb_http_ms bb_http_n < <(bb_run http_2xx "$http_url" 3000)

# --- qu --------------------------------------------------------------------
qu_run() { # kind target checks seconds
  local dir="$work/qu-$1-$3" port sock pid before after run_before run_after
  port=$(free_port); sock="$dir/qu.sock"
  QUPTIME_DIR="$dir" "$QU" init --advertise "127.0.0.1:$port" --bind 127.0.0.1 >/dev/null
  QUPTIME_DIR="$dir" QUPTIME_SOCKET="$sock" RUST_LOG=warn "$QU" serve 2>"$dir.log" &
  pid=$!; pids+=($pid)
  sleep 0.5
  for i in $(seq "$3"); do
    QUPTIME_SOCKET="$sock" "$QU" check add "$1" "$1-$i" "$2" --interval 1s --timeout 500ms >/dev/null
  done
  # Steady state: wait until every check has its first verdict committed,
  # so the window measures probing, not the one-off commits of set-up.
  for _ in $(seq 100); do
    QUPTIME_SOCKET="$sock" "$QU" status --json | python3 -c 'import json,sys; c=json.load(sys.stdin)["checks"]; sys.exit(0 if c and all(x["state"]=="up" for x in c) else 1)' && break
    sleep 0.2
  done
  sleep 2
  run_before=$(QUPTIME_SOCKET="$sock" "$QU" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["probes"]["run"])')
  before=$(cpu_ms "$pid")
  sleep "$4"
  after=$(cpu_ms "$pid")
  run_after=$(QUPTIME_SOCKET="$sock" "$QU" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["probes"]["run"])')
  # A check that changed state in the window means the target, not qu, was
  # measured (a commit per flap): report it rather than a skewed number.
  QUPTIME_SOCKET="$sock" "$QU" status --json | python3 -c 'import json,sys; c=json.load(sys.stdin)["checks"]; bad=[x["name"] for x in c if x["state"]!="up"]; bad and print("warning: not up at the end:", bad[:5], file=sys.stderr)'
  kill "$pid"
  echo "$(( after - before )) $(( run_after - run_before ))"
}

report() { # kind qu_ms qu_n bb_ms bb_n checks
  python3 - "$@" <<'PY'
import sys
kind, q, qn, b, bn, checks = sys.argv[1], *map(float, sys.argv[2:])
qp, bp = q / qn, b / bn
print(f"{kind} ({int(checks)} checks at 1 s): qu {qp*1000:.0f} us CPU/probe ({int(qn)} probes), "
      f"blackbox-exporter {bp*1000:.0f} us CPU/probe ({int(bn)} probes): ratio {qp/bp:.2f}x (goal <= 0.1x)")
PY
}

# Two loads: 100 probes/s, where every probe pays its own wake-ups, and
# 1,000 probes/s, where they share them.
for checks in 100 1000; do
  read -r qu_ms qu_n < <(qu_run tcp "$tcp_target" "$checks" 30)
  report tcp "$qu_ms" "$qu_n" "$bb_tcp_ms" "$bb_tcp_n" "$checks"
  read -r qu_ms qu_n < <(qu_run http "$http_url" "$checks" 30)
  report http "$qu_ms" "$qu_n" "$bb_http_ms" "$bb_http_n" "$checks"
done
