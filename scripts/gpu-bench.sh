#!/usr/bin/env bash
# Decode-attention figures on a lent GPU (the `device` tool), in two steps:
#
#   bash scripts/gpu-bench.sh prepare   # here: build the release binary, fetch the Vulkan
#                                       # loader and vulkaninfo packages into .gl/
#   bash scripts/gpu-bench.sh run OUT   # there (carry .gl): unpack the loader, report the
#                                       # adapter, run the benchmarks into OUT
#
# `prepare` copies target/release/vidkv into .gl/ (git-ignored through .git/info/exclude),
# so a run carries one path: `.gl`. The loader packages are unpacked into / there;
# vulkaninfo and the X/Wayland client libraries it links are unpacked into a folder of
# their own (unpacking more into / can break the machine's system).
#
# `run` writes, step by step (each file grows as its steps finish, so a run cut short
# keeps what it measured; six files, within what the device tool brings back):
# - OUT/adapter.json: `vidkv adapter --json` (name, driver, subgroup sizes, shader-f16,
#   immediates, cooperative-matrix configurations, the fast paths and split size vidkv
#   picks);
# - OUT/vulkaninfo.txt: its device, driver, subgroup, float16, packed integer dot product and
#   cooperative-matrix lines, where vulkaninfo runs;
# - OUT/attention.jsonl: `bench attention --kernels --json`, one line per context (16k,
#   64k, 128k), the default presets and `rotated`; its `(portable)` rows time the
#   subgroup and shader-f16 fast paths' portable counterparts;
# - OUT/protected.jsonl: `vidkv` with every fifth token protected (its fused dispatch,
#   then the STP refinement pass), at 16k and 128k;
# - OUT/cache.txt: `bench cache` (28 layers, 16k), then the same on a context without
#   subgroups or immediates (parameters in uniform slots, as in a browser);
# - OUT/splits.jsonl: `vidkv` and fp16 at 16k and 128k with splits of 256, 1024 and 2048
#   tokens against the default 512 (the GPU split size is a guess until such a run);
# - OUT/log.txt: each step's command, time and exit status.
# Steps run in that order until GPU_BENCH_SECONDS (default 480) have passed; each is cut
# at the time left. CONTEXTS and LONG (default "16384 65536 131072" and 131072) set the
# contexts: `CONTEXTS="1024 4096" LONG=4096 bash scripts/gpu-bench.sh run /tmp/out` is a
# quick dry run. On a machine without .gl/ (lavapipe here) `run` uses
# target/release/vidkv and the installed loader.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    cargo build --release --features cli --quiet
    grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
    rm -rf .gl
    mkdir -p .gl/tools /tmp/amd64/partial
    apt_options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${apt_options[@]}" update -qq
    (cd .gl && apt-get "${apt_options[@]}" download -qq \
        libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    (cd .gl/tools && apt-get "${apt_options[@]}" download -qq \
        vulkan-tools libx11-6 libx11-data libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 \
        libwayland-client0 libffi8)
    cp target/release/vidkv .gl/vidkv
    du -sh .gl
    ;;
run)
    out=${2:?usage: scripts/gpu-bench.sh run OUT}
    mkdir -p "$out"
    budget=${GPU_BENCH_SECONDS:-480}
    contexts=${CONTEXTS:-16384 65536 131072}
    long=${LONG:-131072}
    short=${contexts%% *}
    binary=target/release/vidkv
    vulkaninfo=vulkaninfo
    if [ -d .gl ]; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        [ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd
        for f in .gl/tools/*.deb; do dpkg -x "$f" /tmp/vulkan-tools; done
        vulkaninfo="env LD_LIBRARY_PATH=/tmp/vulkan-tools/usr/lib/x86_64-linux-gnu \
            /tmp/vulkan-tools/usr/bin/vulkaninfo"
        binary=.gl/vidkv
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
    start=$SECONDS
    # step FILE ARGS...: runs the binary with ARGS, appending its output to OUT/FILE, cut
    # at the time left; skipped once the budget is spent.
    step() {
        local file=$1 left rc
        shift
        left=$((budget - (SECONDS - start)))
        if [ "$left" -le 5 ]; then
            echo "skipped (budget spent): $*" >> "$out/log.txt"
            return 0
        fi
        rc=0
        timeout "$left" "$binary" "$@" >> "$out/$file" 2>> "$out/log.txt" || rc=$?
        echo "$((SECONDS - start)) s, exit $rc: $*" >> "$out/log.txt"
    }
    step adapter.json adapter --json
    # shellcheck disable=SC2086 # $vulkaninfo is a command with its environment
    timeout 30 $vulkaninfo 2>/dev/null \
        | grep -E 'deviceName|driverName|driverInfo|subgroupSize|shaderFloat16|integerDotProduct4x8BitPacked|[Cc]ooperativeMatrix' \
        | sort -u > "$out/vulkaninfo.txt" || echo "vulkaninfo did not run" >> "$out/log.txt"
    for context in $contexts; do
        step attention.jsonl bench attention --context "$context" \
            --preset kivi2 --preset vidkv-paper --preset vidkv-tuned --preset vidkv \
            --preset rotated --runs 5 --kernels --json
    done
    for context in $short $long; do
        step protected.jsonl bench attention --context "$context" --preset vidkv \
            --protect 0.2 --runs 5 --kernels --json
    done
    step cache.txt bench cache --layers 28 --context "$short" --runs 3
    step cache.txt bench cache --layers 28 --context "$short" --runs 3 --portable
    for split in 256 1024 2048; do
        step splits.jsonl bench attention --context "$short" --context "$long" \
            --preset vidkv --runs 5 --split-tokens "$split" --json
    done
    cat "$out/log.txt" "$out/cache.txt" 2>/dev/null || true
    ;;
*)
    echo "usage: bash scripts/gpu-bench.sh prepare | run OUT" >&2
    exit 2
    ;;
esac
