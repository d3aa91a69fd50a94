#!/usr/bin/env bash
# The agent's own cost while it covers N busy Go processes (tests/fixtures/agentload
# -busy: 4 KiB buffers in a loop, heap sampler linked, so the default mode is
# runtime-sampled): its CPU seconds over a window (from /proc/PID/stat) and its RSS, with
# the fixtures' CPU for scale. Needs root and a built gomemtrace (cargo build --release
# for the numbers in docs/BENCHMARKS.md).
#
#   scripts/bench-agent.sh [PROCESSES] [SECONDS] [GO_VERSION]
set -euo pipefail
n=${1:-20}
window=${2:-30}
ver=${3:-1.25}
root=$(cd "$(dirname "$0")/.." && pwd)
go=${GOMEMTRACE_CACHE:-$HOME/.cache/gomemtrace}/go/$ver/bin/go
gomemtrace=${GOMEMTRACE_BIN:-$root/target/release/gomemtrace}
tmp=$(mktemp -d)
agent=
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$agent" ] && kill "$agent" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cp "$root/tests/fixtures/agentload/main.go" "$tmp/"
printf 'module agentload\n\ngo 1.19\n' > "$tmp/go.mod"
(cd "$tmp" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off "$go" build -o agentload .)
port=$((20000 + RANDOM % 20000))
"$gomemtrace" agent --listen "127.0.0.1:$port" --include-exe "$tmp/agentload" 2>"$tmp/agent.log" &
agent=$!
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
for _ in $(seq "$n"); do
  GOMAXPROCS=1 "$tmp/agentload" -busy "$((window + 15))s" -count 1000 &
  pids+=($!)
done
# Let the agent attach to all of them.
sleep 5
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
a0=$(ticks "$agent")
f0=0; for p in "${pids[@]}"; do f0=$((f0 + $(ticks "$p"))); done
sleep "$window"
a1=$(ticks "$agent")
f1=0; for p in "${pids[@]}"; do f1=$((f1 + $(ticks "$p"))); done
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
metrics=$(curl -s "127.0.0.1:$port/metrics")
attached=$(echo "$metrics" | awk '/^gomemtrace_agent_attached_processes / {print $2}')
events=$(echo "$metrics" | awk '/^gomemtrace_agent_probe_events_total / {print $2}')
awk -v a=$((a1 - a0)) -v f=$((f1 - f0)) -v hz="$hz" -v w="$window" -v n="$n" \
    -v att="$attached" -v rss="$rss_kb" -v hwm="$hwm_kb" -v ev="$events" 'BEGIN {
  printf "processes %d (attached %s), window %ds\n", n, att, w
  printf "agent cpu %.2f s = %.2f%% of one core; fixtures cpu %.1f s; agent/fixtures %.3f%%\n", a/hz, 100*a/hz/w, f/hz, (f > 0 ? 100*a/f : 0)
  printf "agent rss %.1f MiB (peak %.1f MiB); probe events %s\n", rss/1024, hwm/1024, ev
}'
