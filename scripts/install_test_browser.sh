#!/usr/bin/env bash
# Install Debian's chromium for the browser test of the HTML report, if it is missing.
# Idempotent and quiet: does nothing when a chromium is already on PATH; installs only as
# root (CI and the project's machines); otherwise says how and exits 0, so the browser
# test is skipped with its own reason rather than failing the set-up.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_browser: chromium not found; run as root (or: sudo apt-get install chromium)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_browser: chromium not found and apt-get is not available; browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null
apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1
