#!/usr/bin/env bash
# Browser test of the demo page: builds vidkv natively and for wasm32 (scripts/build-wasm.sh:
# the library in the page), serves the demo on 127.0.0.1, opens it in Debian's headless
# chromium with WebGPU (SwiftShader) through playwright-core, and checks the figures the
# library computes in the page against the native library's (web/test.mjs). Leaves
# web/out/screenshot.png. Needs: chromium (apt-get install chromium), Node.js with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium_bin" ]; then
    echo "error: $chromium_bin not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM" >&2
    exit 1
fi
if [ ! -d web/node_modules/playwright-core ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
# The README test command's build (`cargo test` resolves features with the dev-dependencies;
# a plain `cargo build` would compile naga, wgpu and everything above them again): after
# that command this is a no-op, and it leaves the binary in target/release.
cargo test --release --features lm --no-run --quiet
bash scripts/build-wasm.sh

out=web/out
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
"${CARGO_TARGET_DIR:-target}/release/vidkv" demo --port 0 >"$out/demo.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

url=""
for _ in $(seq 1 600); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$out/demo.log" | head -n1 || true)
    [ -n "$url" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "error: vidkv demo exited:" >&2
        cat "$out/demo.log" >&2
        exit 1
    fi
    sleep 0.2
done
if [ -z "$url" ]; then
    echo "error: vidkv demo printed no URL in 120 s" >&2
    cat "$out/demo.log" >&2
    exit 1
fi
echo "serving $url"
node web/test.mjs "$url" "$out/screenshot.png"
