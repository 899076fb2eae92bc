#!/usr/bin/env bash
# Installs what the tests need, once (it does nothing when everything is there):
# - Mesa's Vulkan software driver (lavapipe), the GPU adapter the GPU tests run on;
# - Debian's chromium (WebGPU on SwiftShader) for the browser demo's test (web/test.sh);
# - Node.js/npm if missing, and the playwright-core of web/package.json (no browser
#   download: the test drives the system chromium).
# Debian or Ubuntu; apt-get runs through sudo when not root. The README's test command and
# .ci/run start with it.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
if command -v dpkg >/dev/null 2>&1; then
    dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers)
    dpkg -s chromium >/dev/null 2>&1 || packages+=(chromium)
fi
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
if [ ${#packages[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: install ${packages[*]} (a Vulkan driver, chromium, Node.js) with your package manager" >&2
        exit 1
    fi
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
if [ ! -d web/node_modules/playwright-core ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
