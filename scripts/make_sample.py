#!/usr/bin/env python3
"""Cuts the bundled real samples in data/ from ../shared/data (standard library only).

text:  SmolLM2-135M, stored layers 0, 2, 5 (model layers 0, 12, 29), all heads, all 512 tokens.
video: DINOv2 ViT-S/14, stored layer 1 (model layer 6), all heads, the first 4 frames (1024 tokens)
       and the queries that fall inside them.
Run from the repository root: python3 scripts/make_sample.py
"""
import json
import struct
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent.parent / "data"


def load(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        start, end = info["data_offsets"]
        tensors[name] = (info["shape"], body[start:end])
    return tensors


def cut(shape, data, layers, tokens_axis_keep):
    """Keeps `layers` of axis 0 and the indices `tokens_axis_keep` of axis 2 (f32, row-major)."""
    L, H, T, D = shape
    row = D * 4
    out = bytearray()
    for l in layers:
        for h in range(H):
            base = ((l * H + h) * T) * row
            for t in tokens_axis_keep:
                out += data[base + t * row : base + (t + 1) * row]
    return [len(layers), H, len(tokens_axis_keep), D], bytes(out)


def save(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, data in tensors.values():
            f.write(data)


def main():
    OUT.mkdir(exist_ok=True)
    # Text: three layers, everything else whole.
    src = load(SHARED / "smollm2_text_dev.safetensors")
    side = json.loads((SHARED / "smollm2_text_dev.json").read_text())
    keep = [0, 2, 5]
    tensors = {n: cut(*src[n], keep, range(src[n][0][2])) for n in ("k", "v", "q")}
    side["layers"] = [side["layers"][i] for i in keep]
    side["shapes"] = {n: t[0] for n, t in tensors.items()}
    side["cut_from"] = "smollm2_text_dev.safetensors, stored layers 0, 2, 5 (scripts/make_sample.py)"
    save(OUT / "smollm2_text_sample.safetensors", tensors, {"source": "smollm2_text_dev"})
    (OUT / "smollm2_text_sample.json").write_text(json.dumps(side, indent=1))

    # Video: one layer, the first four frames.
    src = load(SHARED / "dinov2_video_dev.safetensors")
    side = json.loads((SHARED / "dinov2_video_dev.json").read_text())
    frames, per_frame = 4, side["tokens_per_frame"]
    tokens = frames * per_frame
    queries = [i for i, p in enumerate(side["q_positions"]) if p < tokens]
    tensors = {n: cut(*src[n], [1], range(tokens)) for n in ("k", "v")}
    tensors["q"] = cut(*src["q"], [1], queries)
    side["layers"] = [side["layers"][1]]
    side["tokens"] = tokens
    side["q_positions"] = [side["q_positions"][i] for i in queries]
    side["attention"]["blocks"] = side["attention"]["blocks"][:frames]
    for key in ("token_kinds", "frame_index"):
        side[key] = side[key][:tokens]
    side["shapes"] = {n: t[0] for n, t in tensors.items()}
    side["cut_from"] = "dinov2_video_dev.safetensors, stored layer 1, frames 0-3 (scripts/make_sample.py)"
    save(OUT / "dinov2_video_sample.safetensors", tensors, {"source": "dinov2_video_dev"})
    (OUT / "dinov2_video_sample.json").write_text(json.dumps(side, indent=1))
    total = sum(p.stat().st_size for p in OUT.glob("*_sample.*"))
    print(f"wrote {total} bytes to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
