#!/usr/bin/env bash
# Refresh the browser libraries vendored into web/vendor/ from the npm registry.
#
# The page has no build step: web/ is served as it is, so third-party code is
# checked in. This script is the only way it changes: a pinned version, fetched
# from the registry tarball, checked against the registry's published sha512
# (pinned here too, so a re-published tarball cannot slip in), then unpacked.
#
# Usage: scripts/vendor-web.sh        (needs curl, tar, python3)
set -euo pipefail

UPLOT_VERSION="1.6.32"
UPLOT_SHA512="KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
REGISTRY="${NPM_REGISTRY:-https://registry.npmjs.org}"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/web/vendor/uplot"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

tarball="$tmp/uplot.tgz"
curl --fail --silent --show-error --location \
  "$REGISTRY/uplot/-/uplot-$UPLOT_VERSION.tgz" -o "$tarball"

actual="$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")"
if [[ "$actual" != "$UPLOT_SHA512" ]]; then
  echo "uplot $UPLOT_VERSION: sha512 mismatch (expected $UPLOT_SHA512, got $actual)" >&2
  exit 1
fi

tar -xzf "$tarball" -C "$tmp"
rm -rf "$dest"
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.esm.js" "$dest/uPlot.esm.js"
cp "$tmp/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$tmp/package/LICENSE" "$dest/LICENSE"
printf 'uplot %s from %s (sha512-%s)\n' "$UPLOT_VERSION" "$REGISTRY" "$UPLOT_SHA512" > "$dest/VERSION"
echo "vendored uplot $UPLOT_VERSION into ${dest#"$root"/}"
