#!/usr/bin/env bash
# Build the report's offline splat viewer (Spark + three.js, pinned in package-lock.json) into
# dist/viewer.js. Run by `make setup`; idempotent. Needs node >= 18 and npm with access to the npm
# registry. Exits 0 when node/npm are missing so setup still finishes: the report then says the
# 3D view needs this script, and the browser tests of the viewer skip and print why.
set -u
cd "$(dirname "$0")" || exit 0
OUT=dist/viewer.js
if [ -s "$OUT" ] && [ "$OUT" -nt package-lock.json ] && [ "$OUT" -nt entry.js ]; then
    echo "report-viewer: $OUT up to date"
    exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "report-viewer: node/npm not found; install Node.js >= 18 for the report's 3D view" >&2
    exit 0
fi
# --ignore-scripts: esbuild's platform binary comes as an optional dependency; nothing else needs a script
if ! npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; then
    echo "report-viewer: npm ci failed; the report's 3D view is unavailable until this script succeeds" >&2
    exit 0
fi
mkdir -p dist
if node_modules/.bin/esbuild entry.js --bundle --format=iife --minify --legal-comments=eof \
        --log-level=error --outfile="$OUT.tmp" && mv "$OUT.tmp" "$OUT"; then
    cat node_modules/three/LICENSE > dist/LICENSES.txt
    printf '\n\n---- @sparkjsdev/spark ----\n' >> dist/LICENSES.txt
    cat node_modules/@sparkjsdev/spark/LICENSE* >> dist/LICENSES.txt 2>/dev/null
    echo "report-viewer: ok ($OUT, $(wc -c < "$OUT") bytes)"
else
    rm -f "$OUT.tmp"
    echo "report-viewer: bundling failed; the report's 3D view is unavailable" >&2
fi
exit 0
