#!/usr/bin/env bash
# Install the system packages the browser tests need (headless Chromium + its WebDriver).
# Used by `make test`; idempotent: does nothing when both binaries are already on PATH.
# Exits 0 even when installation is impossible (no root, no apt-get, no network) so that
# `make test` still runs: the browser tests then skip and print why.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "install_test_deps: chromium and chromedriver already installed"
    exit 0
fi

if ! have apt-get; then
    echo "install_test_deps: apt-get not found; install chromium and chromium-driver yourself" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_test_deps: not root and no passwordless sudo; run:" >&2
        echo "  sudo apt-get install -y chromium chromium-driver" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_test_deps: installing chromium chromium-driver with apt-get"
if ! $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; then
    $SUDO apt-get update -q && \
        $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver || {
        echo "install_test_deps: apt-get could not install chromium; browser tests will skip" >&2
        exit 0
    }
fi
have chromium && have chromedriver && echo "install_test_deps: ok ($(chromium --version 2>/dev/null))"
exit 0
