#!/usr/bin/env bash
# Cost of `gomemtrace goroutines` per goroutine creation (newproc1 RET + gdestroy entry
# probes): creations/s of scripts/bench-goroutines unprofiled, traced with creation
# stacks (the default), and traced with --no-stacks. Rounds interleave the variants; the
# median of each is printed. Needs root and a built gomemtrace (cargo build).
#
#   scripts/bench-goroutines.sh [ROUNDS] [GO_VERSION]
set -euo pipefail
rounds=${1:-5}
ver=${2:-1.25}
root=$(cd "$(dirname "$0")/.." && pwd)
go=${GOMEMTRACE_CACHE:-$HOME/.cache/gomemtrace}/go/$ver/bin/go
gomemtrace=${GOMEMTRACE_BIN:-$root/target/debug/gomemtrace}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$root/scripts/bench-goroutines/main.go" "$tmp/"
printf 'module bench\n\ngo 1.19\n' > "$tmp/go.mod"
(cd "$tmp" && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go" build -o bench .)
declare -A results
for r in $(seq "$rounds"); do
  results[plain]+="$("$tmp/bench" | awk '{print $2}') "
  results[stacks]+="$("$gomemtrace" goroutines -q -o /dev/null -- "$tmp/bench" | awk '{print $2}') "
  results[nostacks]+="$("$gomemtrace" goroutines -q --no-stacks -o /dev/null -- "$tmp/bench" | awk '{print $2}') "
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${results[plain]}" | median)
for v in plain stacks nostacks; do
  m=$(echo "${results[$v]}" | median)
  added=$(awk -v b="$base" -v m="$m" 'BEGIN { if (m > 0) printf "%.0f", 1e9/m - 1e9/b; else print "?" }')
  echo "$v creations/s $m added_ns_per_creation $added (rounds: ${results[$v]})"
done
