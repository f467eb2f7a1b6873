#!/usr/bin/env bash
# Makes the working tree light enough to travel to the GPU machine, and puts it
# back afterwards.
#
# A device call takes the working tree (tracked files, and untracked ones git
# does not ignore) and its carry together up to 64 MiB. The tracked tree alone
# is over that since the 詞 model landed beside the bundled one (two models of
# 27 MiB, a font of 7 MiB), so no call could go, whatever the carry. No device
# step reads those files: the GPU runs use models/tang-poems and a random 124M
# checkpoint, and the font and icon are compiled into the binary. `on` takes
# slim_paths (below) out of git's index only (the files stay on disk, untouched) and
# ignores them in .git/info/exclude, so they do not travel; `off` puts the
# index back from HEAD and drops the exclusion. While it is on, a pre-commit
# hook refuses commits, since one would delete those files from the repository.
#
#   packaging/cuda/slim-tree.sh on|off|status|bytes [on]
#
# `status` says which, with the size that travels; `bytes` prints that size
# alone (what gpu-carry.sh checks against the limit), and `bytes on` the size
# it would be with the slim tree on, changing nothing (tests/device_tree.rs
# keeps it under the limit with room for the carry).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
gitdir=$(git rev-parse --absolute-git-dir)
slim_paths=(models/song-ci assets tests/snapshots)
marker="$gitdir/versifier-slim-tree"
exclude="$gitdir/info/exclude"
hook="$gitdir/hooks/pre-commit"
begin='# >>> slim-tree.sh (packaging/cuda): not sent to the GPU machine'
end='# <<< slim-tree.sh'

# What a device call takes from the checkout: tracked files that are on disk,
# and untracked ones git does not ignore; with an argument, as it would be
# with the slim tree on (pathspecs that leave slim_paths out).
bytes() {
  local spec=(.)
  if [ $# -gt 0 ]; then for p in "${slim_paths[@]}"; do spec+=(":(exclude)$p"); done; fi
  (git ls-files -z -- "${spec[@]}"; git ls-files -z --others --exclude-standard -- "${spec[@]}") \
    | xargs -0 -r stat -c %s -- 2> /dev/null \
    | awk '{ n += $1 } END { print n + 0 }'
}
mib() { echo "$(( ($1 + (1 << 19)) >> 20 )) MiB"; }

case "${1:-status}" in
  bytes)
    if [ "${2:-}" = on ]; then bytes on; else bytes; fi
    ;;
  status)
    if [ -f "$marker" ]; then state=on; else state=off; fi
    echo "slim tree: $state; the working tree travels as $(mib "$(bytes)") (a device call takes 64 MiB with its carry)"
    ;;
  on)
    if [ -f "$marker" ]; then echo "slim tree: already on"; exit 0; fi
    if [ -n "$(git status --porcelain -- "${slim_paths[@]}")" ]; then
      echo "slim-tree.sh: ${slim_paths[*]} have changes; commit or restore them first (off restores them from HEAD)" >&2
      exit 1
    fi
    if [ -e "$hook" ]; then
      echo "slim-tree.sh: $hook exists; it guards commits while the tree is slim, so move that hook aside first" >&2
      exit 1
    fi
    before=$(bytes)
    mkdir -p "$(dirname "$exclude")" "$(dirname "$hook")"
    # A last line without its newline would swallow the block's first line.
    if [ -s "$exclude" ] && [ -n "$(tail -c 1 "$exclude")" ]; then echo >> "$exclude"; fi
    {
      echo "$begin"
      for p in "${slim_paths[@]}"; do echo "/$p/"; done
      echo "$end"
    } >> "$exclude"
    cat > "$hook" <<'HOOK'
#!/bin/sh
# Installed by packaging/cuda/slim-tree.sh on; removed by `off`.
echo "pre-commit: the tree is slimmed for the GPU machine (its models, assets and snapshots are out of git's index); run packaging/cuda/slim-tree.sh off first" >&2
exit 1
HOOK
    chmod +x "$hook"
    printf '%s\n' "${slim_paths[@]}" > "$marker"
    git rm -r -q --cached --ignore-unmatch -- "${slim_paths[@]}"
    echo "slim tree: on; the working tree travels as $(mib "$(bytes)") (was $(mib "$before")); packaging/cuda/slim-tree.sh off puts it back"
    ;;
  off)
    if [ ! -f "$marker" ]; then echo "slim tree: already off"; exit 0; fi
    mapfile -t paths < "$marker"
    git reset -q HEAD -- "${paths[@]}"
    sed -i "\|^$begin\$|,\|^$end\$|d" "$exclude"
    rm -f "$hook" "$marker"
    left=$(git status --porcelain -- "${paths[@]}")
    if [ -n "$left" ]; then
      echo "slim-tree.sh: after off, these differ from HEAD:" >&2
      echo "$left" >&2
      exit 1
    fi
    echo "slim tree: off; the working tree travels as $(mib "$(bytes)")"
    ;;
  *)
    echo "usage: packaging/cuda/slim-tree.sh on|off|status|bytes [on]" >&2
    exit 2
    ;;
esac
