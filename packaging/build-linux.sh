#!/usr/bin/env bash
# Builds the release binary and the Linux packages in one command:
#   target/packages/versifier_<version>_<arch>.deb   (dpkg-deb, always)
#   target/packages/Versifier.AppDir                 (always; runnable as AppDir/AppRun)
#   target/packages/Versifier-<version>-<arch>.AppImage  (when `appimagetool` is on PATH)
#
# Usage: packaging/build-linux.sh [--binary PATH]   (default: cargo build --release --locked)
#   --binary lets you package another build, e.g. target-cuda/release/versifier
#   from packaging/cuda/build.sh.
# Then: packaging/linux/smoke-test.sh target/packages/versifier_*.deb
#
# Layout (the app finds its model relative to the executable, store::bundled_model):
#   /usr/bin/versifier
#   /usr/share/versifier/models/tang-poems/        the bundled model
#   /usr/share/versifier/models/song-ci/           its 詞 model (--form ci:TUNE)
#   /usr/share/applications/versifier.desktop      menu entry
#   /usr/share/icons/hicolor/{16..512}/apps/versifier.png, scalable/apps/versifier.svg
#   /usr/share/doc/versifier/                      copyright, model card, font licences
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release --locked
  binary=target/release/versifier
fi
[ -x "$binary" ] || { echo "no executable at $binary" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
out=target/packages
stage=$out/deb-root
rm -rf "$stage" "$out/Versifier.AppDir"
mkdir -p "$out"

# Installs the app's files under $1 with prefix usr/.
install_tree() {
  local dest=$1
  install -Dm755 "$binary" "$dest/usr/bin/versifier"
  strip --strip-unneeded "$dest/usr/bin/versifier" 2>/dev/null || true
  mkdir -p "$dest/usr/share/versifier/models"
  cp -r models/tang-poems models/song-ci "$dest/usr/share/versifier/models/"
  install -Dm644 packaging/linux/versifier.desktop "$dest/usr/share/applications/versifier.desktop"
  for s in 16 32 48 64 128 256 512; do
    install -Dm644 "assets/icons/versifier-$s.png" "$dest/usr/share/icons/hicolor/${s}x${s}/apps/versifier.png"
  done
  install -Dm644 assets/icons/versifier.svg "$dest/usr/share/icons/hicolor/scalable/apps/versifier.svg"
  install -Dm644 packaging/linux/copyright "$dest/usr/share/doc/versifier/copyright"
  install -Dm644 models/tang-poems/MODEL_CARD.md "$dest/usr/share/doc/versifier/MODEL_CARD.md"
  install -Dm644 assets/fonts/NOTO-LICENSE.txt "$dest/usr/share/doc/versifier/NOTO-LICENSE.txt"
}

# --- .deb -------------------------------------------------------------------
install_tree "$stage"
installed_kib=$(du -sk "$stage/usr" | cut -f1)
mkdir -p "$stage/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$installed_kib/" \
  packaging/linux/control.in > "$stage/DEBIAN/control"
find "$stage" -type d -exec chmod 755 {} +
deb="$out/versifier_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "built $deb ($(du -h "$deb" | cut -f1))"

# --- AppDir / AppImage ----------------------------------------------------------
appdir=$out/Versifier.AppDir
install_tree "$appdir"
cp packaging/linux/versifier.desktop "$appdir/versifier.desktop"
cp assets/icons/versifier-256.png "$appdir/versifier.png"
ln -sf versifier.png "$appdir/.DirIcon"
cat > "$appdir/AppRun" <<'RUN'
#!/bin/sh
# Starts the bundled binary; it finds the model at ../share/versifier beside it.
here=$(dirname "$(readlink -f "$0")")
exec "$here/usr/bin/versifier" "$@"
RUN
chmod 755 "$appdir/AppRun"
echo "built $appdir (run it with $appdir/AppRun)"
if command -v appimagetool >/dev/null; then
  image="$out/Versifier-$version-$(uname -m).AppImage"
  ARCH=$(uname -m) appimagetool --no-appstream "$appdir" "$image"
  echo "built $image"
else
  echo "appimagetool not on PATH: AppImage not built (the AppDir above is its complete content)"
fi
