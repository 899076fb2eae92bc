#!/usr/bin/env python3
"""Ablations of shaders/attention_split_groups.wgsl on the machine's adapter.

For each part of the tile loop, builds a copy of the crate (in a temporary directory, with
its own target directory under target/ablate) in which that part is cut out of the shader,
and prints the `vidkv` median of `bench attention --context 16384 --runs 3 --preset vidkv`.
The cut kernels compute nonsense; only their times mean anything: the time a part costs
is the full kernel's time minus the time without it. Usage:

    python3 scripts/ablate-split-groups.py [part ...]

Parts: none (the shipped kernel), staging, key-dots, logits (with the centre terms and the
mask), maxima (the rows' new maxima), weights (e^(s − max), their sums and the value
transforms), value-sums, tile-body (everything from staging to the value sums).
"""
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHADER = "shaders/attention_split_groups.wgsl"
END_OF_TILE = "        workgroupBarrier();\n    }\n\n    // The centre weights"
CUTS = {
    "none": None,
    "staging": ("        // Stage the rows of both planes", "        // Key dots: row r"),
    "key-dots": ("        // Key dots: row r", "        // Logits,"),
    "logits": ("        // Logits,", "        // The rows' new running maxima"),
    "maxima": ("        // The rows' new running maxima", "        // Weights, a task per"),
    "weights": ("        // Weights, a task per", "        // The rows' running sums"),
    "value-sums": ("        // Σ weight · scale · levels", END_OF_TILE),
    "tile-body": ("        // Stage the rows of both planes", END_OF_TILE),
}


def cut(source, part):
    if CUTS[part] is None:
        return source
    start, end = CUTS[part]
    a = source.index(start)
    b = source.index(end, a)
    return source[:a] + source[b:]


def main():
    parts = sys.argv[1:] or list(CUTS)
    unknown = [p for p in parts if p not in CUTS]
    if unknown:
        sys.exit(f"unknown parts {unknown}; known: {list(CUTS)}")
    source = (ROOT / SHADER).read_text()
    target = ROOT / "target" / "ablate"
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "vidkv"
        skip = shutil.ignore_patterns(".git", "target", "models", "node_modules")
        shutil.copytree(ROOT, copy, ignore=skip)
        for part in parts:
            (copy / SHADER).write_text(cut(source, part))
            subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", str(target)],
                           cwd=copy, check=True)
            out = subprocess.run([str(target / "release" / "vidkv"), "bench", "attention",
                                  "--context", "16384", "--runs", "3", "--preset", "vidkv"],
                                 cwd=copy, check=True, capture_output=True, text=True).stdout
            line = next(l for l in out.splitlines() if re.match(r"\s+vidkv\s+16384", l))
            print(f"{part:14} vidkv median ms {line.split()[2]}", flush=True)


if __name__ == "__main__":
    main()
