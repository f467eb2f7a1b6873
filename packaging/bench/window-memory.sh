#!/usr/bin/env bash
# The window's memory with use: the real app under Xvfb with software GL
# writes RUNS times (three 七絕 each, the 平仄 marks on, Enter in the prompt)
# and this process's resident memory is read after each five; then Release.
# Target (issue #40): growth from run 5 to run 50 at most 10 MiB.
# Needs Debian's xvfb and xdotool. Prints one JSON object.
# Usage: packaging/bench/window-memory.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-50}
bin=./target/release/versifier
[ -x "$bin" ] || cargo build --release
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share LIBGL_ALWAYS_SOFTWARE=1
mkdir -p "$XDG_CONFIG_HOME/versifier"
echo '{"poem_prompt": "山", "variations": 3, "show_marks": true}' >"$XDG_CONFIG_HOME/versifier/settings.json"
Xvfb :76 -screen 0 1400x900x24 >/dev/null 2>&1 &
xvfb=$!
export DISPLAY=:76
sleep 1
"$bin" --log-dir none 2>/dev/null &
app=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
win=$(xdotool search --sync --name '^Versifier$' | head -n1)
xdotool windowsize "$win" 1400 900
sleep 2
xdotool windowfocus --sync "$win" 2>/dev/null || true
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$app/status"; }
launch=$(rss)
samples=()
for i in $(seq "$runs"); do
  # The prompt field (first row), then Enter; three 七絕 take about 2 s here.
  xdotool mousemove --window "$win" 170 47 click 1
  sleep 0.2
  xdotool key --window "$win" End Return
  sleep 2.5
  if [ $((i % 5)) -eq 0 ]; then samples+=("[$i, $(rss)]"); fi
done
# Release (the memory panel's button) and read again.
xdotool key --window "$win" Escape
sleep 0.5
release_xy=$(xdotool search --name '^Versifier$' >/dev/null && echo "1078 339")
xdotool mousemove --window "$win" ${release_xy} click 1
sleep 2
after_release=$(rss)
joined=$(IFS=,; echo "${samples[*]}")
first=$(echo "${samples[0]}" | tr -d '[]' | cut -d, -f2)
last=$(echo "${samples[-1]}" | tr -d '[]' | cut -d, -f2)
growth=$(echo "$last - $first" | bc)
printf '{"runs": %d, "launch_mib": %s, "after_runs_mib": [%s], "growth_from_run_5_mib": %s, "after_release_mib": %s, "target_growth_mib": 10, "machine": "%s cores, %s", "settings": "three 七絕 from 山 a run, 平仄 marks on, 1400x900, Xvfb with software GL"}\n' \
  "$runs" "$launch" "$joined" "$growth" "$after_release" "$(nproc)" "$(uname -m)"
