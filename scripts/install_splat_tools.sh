#!/usr/bin/env bash
# Install the npm tools of `sctd3d export`, each pinned by its package-lock.json (nothing large is
# vendored into git): tools/splat-transform (PlayCanvas splat-transform: --formats spz, sog, html)
# and tools/web-viewers (Spark, GaussianSplats3D, three.js: the viewers tests/test_export_viewers.py
# opens the exported splats with). Used by `make setup`; idempotent. Needs node >= 18 and npm with
# access to the npm registry. Exits 0 when node/npm are missing so setup still finishes: export
# then says which formats need this script, and the tests that need the tools skip and say why.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install_splat_tools: node/npm not found; install Node.js >= 18 for --formats spz,sog,html" >&2
    exit 0
fi
install() {  # $1: folder under tools/, $2: a file that exists once installed
    cd "$ROOT/tools/$1" || return 0
    if [ -e "$2" ]; then
        echo "install_splat_tools: $1 already installed"
        return 0
    fi
    # --ignore-scripts: no post-install steps (splat-transform's webgpu one is not needed: SOG
    # is encoded with -g cpu)
    if npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; then
        echo "install_splat_tools: $1 ok"
    else
        echo "install_splat_tools: npm ci failed in tools/$1; the formats/tests that need it are unavailable until this script succeeds" >&2
    fi
}
BIN=node_modules/.bin/splat-transform
if [ -x "$ROOT/tools/splat-transform/$BIN" ] && "$ROOT/tools/splat-transform/$BIN" -v >/dev/null 2>&1; then
    echo "install_splat_tools: $("$ROOT/tools/splat-transform/$BIN" -v 2>&1 | head -1) already installed"
else
    install splat-transform "$BIN"
fi
install web-viewers node_modules/@sparkjsdev/spark/dist/spark.module.js
install gltf-validator node_modules/gltf-validator/package.json  # --formats glb: the Khronos validator
exit 0
