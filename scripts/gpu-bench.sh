#!/usr/bin/env bash
# Decode-attention figures on a lent GPU (the `device` tool), in two steps:
#
#   bash scripts/gpu-bench.sh prepare   # here: build the release binary, fetch the Vulkan
#                                       # loader and vulkaninfo packages into .gl/
#   bash scripts/gpu-bench.sh run OUT   # there (carry .gl): unpack the loader, print the
#                                       # adapter's feature lines, run the benchmarks into OUT
#
# `prepare` copies target/release/vidkv into .gl/ (git-ignored through .git/info/exclude),
# so a run carries one path: `.gl`. `run` writes OUT/vulkaninfo.txt (device name, subgroup
# size, shader-f16, integer dot product, cooperative-matrix lines), OUT/attention.json
# (`bench attention` at 16k, 64k and 128k tokens with `--kernels --json`, the default
# presets and `rotated`; its `(portable)` rows time the subgroup and shader-f16 fast paths'
# portable counterparts), OUT/protected.json (`vidkv` with every fifth token protected:
# its fused dispatch, then the STP refinement pass), OUT/cache.txt (`bench cache`, 28
# layers at 16k), OUT/cache-portable.txt (the same on a context without subgroups or
# immediates: parameters in uniform slots, as in a browser) and OUT/split-N.json (`vidkv` and
# fp16 at 16k and 128k with splits of N = 256, 1024 and 2048 tokens, against the default
# 512: the GPU split size is a guess until such a run). On a machine without .gl/ (lavapipe
# here) `run` uses target/release/vidkv and the installed loader, as a dry run.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    cargo build --release --features cli --quiet
    grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
    mkdir -p .gl /tmp/amd64/partial
    apt_options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${apt_options[@]}" update -qq
    (cd .gl && apt-get "${apt_options[@]}" download -qq libvulkan1 vulkan-tools)
    cp target/release/vidkv .gl/vidkv
    du -sh .gl
    ;;
run)
    out=${2:?usage: scripts/gpu-bench.sh run OUT}
    mkdir -p "$out"
    binary=target/release/vidkv
    if [ -d .gl ]; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        [ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd
        binary=.gl/vidkv
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
    if command -v vulkaninfo >/dev/null 2>&1; then
        vulkaninfo 2>/dev/null \
            | grep -E 'deviceName|subgroupSize|shaderFloat16|integerDotProduct|[Cc]ooperativeMatrix|driverVersion' \
            | sort -u > "$out/vulkaninfo.txt" || true
    fi
    "$binary" bench attention --context 16384 --context 65536 --context 131072 \
        --preset kivi2 --preset vidkv-paper --preset vidkv-tuned --preset vidkv \
        --preset rotated --runs 5 --kernels --json > "$out/attention.json"
    "$binary" bench attention --context 16384 --context 131072 --preset vidkv \
        --protect 0.2 --runs 5 --kernels --json > "$out/protected.json"
    "$binary" bench cache --layers 28 --context 16384 --runs 3 > "$out/cache.txt"
    "$binary" bench cache --layers 28 --context 16384 --runs 3 --portable \
        > "$out/cache-portable.txt"
    for split in 256 1024 2048; do
        "$binary" bench attention --context 16384 --context 131072 --preset vidkv \
            --runs 5 --split-tokens "$split" --json > "$out/split-$split.json"
    done
    cat "$out/cache.txt"
    ;;
*)
    echo "usage: bash scripts/gpu-bench.sh prepare | run OUT" >&2
    exit 2
    ;;
esac
