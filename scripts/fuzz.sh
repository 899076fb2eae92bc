#!/usr/bin/env bash
# The fuzzing campaign: every target in fuzz/ (libFuzzer through cargo-fuzz, on the nightly
# toolchain) for RUNS executions each (default 1,000,000), from the committed corpus
# fuzz/corpus/<target>/; new inputs go to a scratch folder (FUZZ_WORK, default
# /tmp/vidkv-fuzz), never into the committed corpus. Any crash, panic, abort, allocation over
# 1 GiB or RSS over the limit stops the target with an artifact under fuzz/artifacts/.
# Needs: rustup toolchain nightly, `cargo install cargo-fuzz`, a wgpu adapter (lavapipe) for
# kvcache_file. Prints each target's final statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1000000}"
work="${FUZZ_WORK:-/tmp/vidkv-fuzz}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo +nightly fuzz build -O
bin=fuzz/target/x86_64-unknown-linux-gnu/release
for target in sample_file sidecar packed_cache_file kvcache_file gguf_file; do
    mkdir -p "$work/$target"
    options=(-max_len=65536 -runs="$runs" -rss_limit_mb=4096 -malloc_limit_mb=1024
             -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target-")
    # The Vulkan driver keeps allocations for the process's life, which LeakSanitizer
    # reports at exit; leaks are not what this target looks for.
    if [ "$target" = kvcache_file ]; then
        export ASAN_OPTIONS=detect_leaks=0
        options+=(-detect_leaks=0)
    fi
    mkdir -p fuzz/artifacts
    echo "== $target"
    log="$work/$target.log"
    if ! "$bin/$target" "${options[@]}" "$work/$target" "fuzz/corpus/$target" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target failed (the whole log: $log)" >&2
        exit 1
    fi
    grep -E "^(Done|stat::)" "$log"
    unset ASAN_OPTIONS
done
