#!/usr/bin/env bash
# Refreshes the chart library the built-in page uses (proxy/web/static/chart.umd.min.js) from npm,
# with its licence and version, so the page needs no CDN and no build step.
# Usage: scripts/vendor_chart.sh [VERSION]   (default: the version pinned below)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-4.6.1}"
dest=proxy/web/static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "chart.js@${VERSION}" >/dev/null && tar xzf chart.js-*.tgz)
cp "$work/package/dist/chart.umd.min.js" "$dest/chart.umd.min.js"
cp "$work/package/LICENSE.md" "$dest/chart.js.LICENSE.md"
echo "chart.js ${VERSION} (npm, dist/chart.umd.min.js; MIT, see chart.js.LICENSE.md)" > "$dest/chart.js.VERSION"
sha256sum "$dest/chart.umd.min.js" | cut -d' ' -f1 >> "$dest/chart.js.VERSION"
echo "vendored chart.js ${VERSION} into $dest"
