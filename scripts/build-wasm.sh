#!/usr/bin/env bash
# Builds the library for the browser: web/wasm (the wasm-bindgen API) for wasm32 with
# Debian's rustc-web and its std source (-Zbuild-std), then wasm-bindgen into web/pkg/.
# Recipe: ../shared/docs/wasm-build.md. Installs what it needs once (apt: rustc-web,
# cargo-web, rust-web-src, lld-16; cargo install: wasm-bindgen-cli, the version that
# web/wasm/Cargo.toml pins, into target/tools). Prints the .wasm size, raw and gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
for package in rustc-web cargo-web rust-web-src lld-16; do
    dpkg -s "$package" >/dev/null 2>&1 || packages+=("$package")
done
if [ ${#packages[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

bindgen_version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/wasm/Cargo.toml)
tools=${VIDKV_TOOLS:-$PWD/target/tools}
bindgen=$tools/bin/wasm-bindgen
if ! "$bindgen" --version 2>/dev/null | grep -q "$bindgen_version"; then
    # Native tool, built with the default toolchain (its lockfile is not used: --locked fails).
    cargo install wasm-bindgen-cli --version "$bindgen_version" --root "$tools" --quiet
fi

(
    # Debian's compiler and its std source; -Z flags on a stable compiler.
    export PATH=/usr/bin:$PATH
    export RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-16/bin/wasm-ld
    cd web/wasm
    cargo build --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
        --target-dir ../../target/wasm --quiet
)
"$bindgen" --target web --out-dir web/pkg target/wasm/wasm32-unknown-unknown/release/vidkv_web.wasm
raw=$(stat -c %s web/pkg/vidkv_web_bg.wasm)
gzipped=$(gzip -9 -c web/pkg/vidkv_web_bg.wasm | wc -c)
echo "web/pkg/vidkv_web_bg.wasm: $raw bytes, $gzipped gzipped"
