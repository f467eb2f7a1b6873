#!/usr/bin/env bash
# Takes a screenshot of the real window under Xvfb after a generation, for the
# README: assets/screenshots/main-window.png.
# Needs Debian's xvfb, xdotool, x11-apps (xwd), imagemagick and libgl1-mesa-dri.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
out=${1:-assets/screenshots/main-window.png}
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share LIBGL_ALWAYS_SOFTWARE=1
Xvfb :77 -screen 0 1280x820x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
export DISPLAY=:77
sleep 1
./target/release/versifier &
app=$!
win=$(xdotool search --sync --name '^Versifier$' | head -n1)
xdotool windowsize "$win" 1280 820
sleep 2
# Type a prompt, ask for three variations, press Generate (positions of the default layout).
xdotool windowfocus --sync "$win" 2>/dev/null || true
xdotool mousemove --window "$win" 170 44 click 1
sleep 0.5
xdotool type --delay 200 "${PROMPT:-月}"
xdotool mousemove --window "$win" 135 70 click --repeat 3 1
sleep 0.5
xdotool key --window "$win" BackSpace
xdotool type --delay 100 "3"
xdotool key --window "$win" Return
sleep 0.5
# Back in the prompt box, Ctrl+Enter generates.
xdotool mousemove --window "$win" 170 44 click 1
sleep 0.3
xdotool key --window "$win" ctrl+Return
sleep ${WAIT_S:-8}
xwd -root -display :77 -silent | /usr/bin/convert xwd:- -crop 1280x820+0+0 "$out"
echo "wrote $out"
