#!/usr/bin/env bash
# Start-up to the first visible window, and idle CPU, of the real app under
# Xvfb with software GL (the way the README's figures are measured).
# Needs Debian's xvfb and xdotool. Prints one JSON object.
# Usage: packaging/bench/window-startup.sh [RUNS] [IDLE_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}; idle_s=${2:-20}
bin=./target/release/versifier
[ -x "$bin" ] || cargo build --release
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share LIBGL_ALWAYS_SOFTWARE=1
Xvfb :79 -screen 0 1280x820x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
export DISPLAY=:79
sleep 1
times=()
for i in $(seq "$runs"); do
  start=$(date +%s.%N)
  NO_COLOR=1 "$bin" --log-dir none --log-level info >"$home/run$i.log" 2>&1 &
  app=$!
  # Poll every 10 ms (`xdotool search --sync` sleeps 0.5 s between tries,
  # which rounds every figure up to about half a second).
  until xdotool search --onlyvisible --name '^Versifier$' >/dev/null 2>&1; do sleep 0.01; done
  end=$(date +%s.%N)
  times+=("$(echo "$end - $start" | bc)")
  if [ "$i" -lt "$runs" ]; then kill "$app"; wait "$app" 2>/dev/null || true; fi
done
# The app's own figure: from main to the first frame laid out (in its log).
first=$(for i in $(seq "$runs"); do sed 's/\x1b\[[0-9;]*m//g' "$home/run$i.log" | sed -n 's/.*first_frame_ms=\([0-9.]*\).*/\1/p' | head -n1 | cut -c1-6; done | paste -sd, -)
# Idle CPU of the last window: user+system ticks over idle_s seconds.
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$app/stat"; }
t0=$(ticks); sleep "$idle_s"; t1=$(ticks)
hz=$(getconf CLK_TCK)
kill "$app"; wait "$app" 2>/dev/null || true
idle=$(echo "scale=4; ($t1 - $t0) / $hz / $idle_s * 100" | bc)
printf '{"runs": %s, "first_frame_ms": [%s], "visible_after_s": [%s], "idle_cpu_percent": %s, "idle_seconds": %s, "machine": "%s cores, %s"}\n' \
  "$runs" "$first" "$(IFS=,; echo "${times[*]}")" "$idle" "$idle_s" "$(nproc)" "$(uname -m)"
