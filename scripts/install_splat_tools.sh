#!/usr/bin/env bash
# Install PlayCanvas splat-transform (pinned in tools/splat-transform/package-lock.json) for
# `sctd3d export --formats spz`. Used by `make setup`; idempotent. Needs node >= 18 and npm with
# access to the npm registry. Exits 0 when node/npm are missing so setup still finishes: export
# then says `--formats spz` needs this script, and the SPZ tests skip and print why.
set -u
cd "$(dirname "$0")/../tools/splat-transform" || exit 0
BIN=node_modules/.bin/splat-transform
if [ -x "$BIN" ] && "$BIN" -v >/dev/null 2>&1; then
    echo "install_splat_tools: $("$BIN" -v 2>&1 | head -1) already installed"
    exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install_splat_tools: node/npm not found; install Node.js >= 18 for --formats spz" >&2
    exit 0
fi
# --ignore-scripts: SPZ needs no GPU, so webgpu's post-install step is not run.
if npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; then
    echo "install_splat_tools: ok ($("$BIN" -v 2>&1 | head -1))"
else
    echo "install_splat_tools: npm ci failed; --formats spz unavailable until this script succeeds" >&2
fi
exit 0
