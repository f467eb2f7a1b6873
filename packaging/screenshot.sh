#!/usr/bin/env bash
# Screenshots of the real window under Xvfb, for the README.
# Needs Debian's xvfb, xdotool, x11-apps (xwd), imagemagick and libgl1-mesa-dri.
#
#   packaging/screenshot.sh OUT.png [SETTINGS_JSON|none] [WIDTH HEIGHT] [PROMPT|-]
#
# SETTINGS_JSON is written as the app's settings.json first (e.g.
# '{"variations":3,"device":"Cpu","precision":"f16","form":"QiJue"}'; `none`
# is a first launch). A PROMPT is typed into the prompt box and Ctrl+Enter
# pressed; `-` takes the picture without generating. PX/PY move the click on
# the prompt box, WAIT_S the wait before the picture, READY_S the wait for the
# window before the click. Where xdotool cannot type CJK (a bare Xvfb), click a
# first-launch example instead: PX=401 PY=45 is 春 at 1280 wide (ci-tune.png:
# READY_S=4 WAIT_S=10 PX=401 PY=45 ... '{"variations":2,"device":"Cpu","form":{"Ci":"鹧鸪天"},"show_marks":true}' 1280 820 春).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/versifier ] || cargo build --release
out=${1:-assets/screenshots/main-window.png}; settings=${2:-none}
W=${3:-1280}; H=${4:-820}; prompt=${5:-月}
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_DATA_HOME=$home/.local/share LIBGL_ALWAYS_SOFTWARE=1
if [ "$settings" != none ]; then
  mkdir -p "$XDG_CONFIG_HOME/versifier"
  echo "$settings" >"$XDG_CONFIG_HOME/versifier/settings.json"
fi
Xvfb :77 -screen 0 "${W}x${H}x24" >/dev/null 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
export DISPLAY=:77
sleep 1
./target/release/versifier --log-dir none 2>/dev/null &
app=$!
win=$(xdotool search --sync --name '^Versifier$' | head -n1)
xdotool windowsize "$win" "$W" "$H"
sleep "${READY_S:-2}"
xdotool windowfocus --sync "$win" 2>/dev/null || true
if [ "$prompt" != "-" ]; then
  xdotool mousemove --window "$win" "${PX:-170}" "${PY:-44}" click 1
  sleep 0.5
  xdotool type --delay 200 "$prompt"
  sleep 0.3
  xdotool key --window "$win" ctrl+Return
fi
sleep "${WAIT_S:-8}"
xwd -root -display :77 -silent | /usr/bin/convert xwd:- -crop "${W}x${H}+0+0" "$out"
echo "wrote $out"
