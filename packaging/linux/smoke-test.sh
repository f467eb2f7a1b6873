#!/usr/bin/env bash
# Proves a built .deb works: its contents and menu entry are right, and the
# installed app writes a poem offline with the model it carries.
#
# Usage: packaging/linux/smoke-test.sh target/packages/versifier_<ver>_<arch>.deb [--system]
#   default:  unpacks into a scratch root (dpkg-deb -x) and runs the binary there
#   --system: also installs it for real (dpkg -i, needs root), checks the menu
#             entry and `versifier` on PATH, then removes it (dpkg -r)
# The run has no network where `unshare -rn` works (a fresh network namespace
# with no interfaces); elsewhere it says so and runs with the network as is.
set -euo pipefail
deb=$(readlink -f "$1")
system=${2:-}
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== package metadata"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\):/  \1:/p'
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/versifier ./usr/share/applications/versifier.desktop \
         ./usr/share/icons/hicolor/scalable/apps/versifier.svg \
         ./usr/share/icons/hicolor/256x256/apps/versifier.png \
         ./usr/share/versifier/models/tang-poems/model.safetensors \
         ./usr/share/versifier/models/tang-poems/config.json \
         ./usr/share/versifier/models/tang-poems/vocab.txt \
         ./usr/share/versifier/models/song-ci/model.safetensors \
         ./usr/share/versifier/models/song-ci/config.json \
         ./usr/share/versifier/models/song-ci/vocab.txt \
         ./usr/share/doc/versifier/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "$f missing from the package"
done
echo "  all expected files present"

root="$scratch/root"
dpkg-deb -x "$deb" "$root"
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$root/usr/share/applications/versifier.desktop" || fail "desktop entry invalid"
  echo "  desktop entry valid"
fi

# Run from an empty folder with an empty HOME, so neither the source tree nor
# a user's data folder can supply the model: only the installed copy can.
offline=(unshare -rn)
if ! unshare -rn true 2>/dev/null; then
  echo "  (unshare -rn not permitted here: running with the network as is)"
  offline=()
fi
run() {
  (cd "$scratch" && env -i PATH=/usr/bin:/bin HOME="$scratch/home" VERSIFIER_LOG_DIR=none \
    "${offline[@]}" "$@")
}
mkdir -p "$scratch/home"

echo "== scratch-root install: info"
info=$(run "$root/usr/bin/versifier" info)
grep -q "$root/usr/share/versifier/models/tang-poems" <<<"$info" ||
  fail "info did not use the installed model:\n$info"
echo "  uses $root/usr/share/versifier/models/tang-poems"

echo "== scratch-root install: generate 七絕 from 春 (offline: ${offline[*]:-no})"
poem=$(run "$root/usr/bin/versifier" generate --prompt 春 --form qijue --seed 7)
echo "$poem" | sed 's/^/  /'
# A 七絕 is four lines of seven characters, the first starting with the prompt.
export LC_ALL=C.UTF-8
verses=$(tr -d '\n ' <<<"$poem" | sed 's/[，。！？；、]/\n/g' | sed '/^$/d')
[ "$(wc -l <<<"$verses")" -eq 4 ] || fail "expected four lines, got:\n$poem"
while read -r v; do
  [ "${#v}" -eq 7 ] || fail "line '$v' has ${#v} characters, not 7"
done <<<"$verses"
[[ $poem == 春* ]] || fail "the poem does not start with the prompt"

echo "== scratch-root install: a 浣溪沙 is written by the installed 詞 model"
ci=$(run "$root/usr/bin/versifier" generate --prompt 春 --form ci:浣溪沙 --seed 7 --json)
grep -q "\"model\":\"$root/usr/share/versifier/models/song-ci\"" <<<"$ci" ||
  fail "the 詞 was not written by the installed song-ci:\n$ci"
pattern=$(python3 -c 'import json,sys,re; d=json.load(sys.stdin); t=d["prompt"]+d["text"][0]; print(t); print(" ".join(str(len(x)) + m for x, m in re.findall("([^，。]+)([，。])", t)))' <<<"$ci")
echo "$pattern" | sed 's/^/  /'
[ "$(tail -n1 <<<"$pattern")" = "7。 7。 7。 7， 7。 7。" ] || fail "not the 浣溪沙 pattern 7。7。7。7，7。7。"

if [ "$system" = --system ]; then
  echo "== system install (dpkg -i)"
  dpkg -i "$deb" >/dev/null
  trap 'dpkg -r versifier >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
  [ -f /usr/share/applications/versifier.desktop ] || fail "no menu entry after install"
  command -v versifier >/dev/null || fail "versifier not on PATH after install"
  run versifier generate --prompt 月 --form wujue --seed 3 | sed 's/^/  /'
  dpkg -r versifier >/dev/null
  [ ! -e /usr/bin/versifier ] || fail "dpkg -r left /usr/bin/versifier behind"
  echo "  installed, generated, removed"
fi
echo "SMOKE OK"
