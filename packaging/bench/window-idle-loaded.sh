#!/usr/bin/env bash
# Idle CPU of the real app with a model loaded (one 七絕 written, the idle
# countdown running), under Xvfb with software GL: this process's CPU time
# over IDLE_SECONDS. Target (issue #40): at most 2% of a core.
# Needs Debian's xvfb and xdotool. Prints one JSON object.
# Usage: packaging/bench/window-idle-loaded.sh [IDLE_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
idle_s=${1:-20}
bin=./target/release/versifier
[ -x "$bin" ] || cargo build --release
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share LIBGL_ALWAYS_SOFTWARE=1
mkdir -p "$XDG_CONFIG_HOME/versifier"
echo '{"poem_prompt": "山"}' >"$XDG_CONFIG_HOME/versifier/settings.json"
Xvfb :75 -screen 0 1280x820x24 >/dev/null 2>&1 &
xvfb=$!
export DISPLAY=:75
sleep 1
"$bin" --log-dir none 2>/dev/null &
app=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
win=$(xdotool search --sync --name '^Versifier$' | head -n1)
sleep 2
xdotool windowfocus --sync "$win" 2>/dev/null || true
# Enter in the prompt writes a poem; then the pointer leaves the window.
xdotool mousemove --window "$win" 170 47 click 1
sleep 0.2
xdotool key --window "$win" End Return
sleep 4
xdotool mousemove 5 800
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$app/stat"; }
t0=$(ticks)
sleep "$idle_s"
t1=$(ticks)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$app/status")
printf '{"idle_cpu_percent_loaded": %s, "idle_seconds": %d, "rss_mib": %s, "target_percent": 2, "machine": "%s cores, %s"}\n' \
  "$(echo "scale=2; ($t1 - $t0) * 100 / $hz / $idle_s" | bc)" "$idle_s" "$rss" "$(nproc)" "$(uname -m)"
