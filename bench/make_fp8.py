#!/usr/bin/env python3
"""Write a random-weight fp8 safetensors file from a shared/bench manifest (stdlib + numpy),
stored the way ComfyUI's released fp8 checkpoints are (bench/README.md, "Full size").

usage: make_fp8.py MANIFEST OUT.safetensors --layout e4m3fn|scaled [--blocks N] [--seed S] [--drop-unused]

--layout e4m3fn  every tensor float8_e4m3fn, no scales: a ComfyUI state dict of a model built with
                 dtype=float8_e4m3fn (UNETLoader's weight_dtype), as Comfy-Org's *_fp8_e4m3fn.safetensors
                 diffusion models are stored (linear weights and biases, norm scales, embeddings alike).
--layout scaled  ComfyUI's "scaled fp8" (*_fp8_scaled.safetensors text encoders): the 2-D ".weight" of
                 every linear inside a repeat group is float8_e4m3fn holding weight / scale, with
                 "<layer>.scale_weight" (F32, shape []) = max|weight| / 448; everything else (embeddings,
                 norms, biases, lm_head) stays BF16; an empty F8_E4M3 tensor "scaled_fp8" marks the format
                 (comfy/utils.py convert_old_quants; two elements there would mean full-precision matmuls).
--blocks, --seed, --drop-unused: as shared/bench/make_model.py. Values are make_model.py's exactly (the same
stream per (seed, tensor name), the same init: normal(0, 1/sqrt(fan_in)), norms 1, biases 0, pad tokens
normal(0, 0.02)), so this file is the fp8 rounding of make_model.py's fp32 file of the same seed.

Rounding fp32 -> e4m3fn is to nearest, ties to even, saturating at +-448 (as ComfyUI's converters clamp
before casting); the file is streamed in chunks, header first, tensors in the order the safetensors
reference writer uses (element size descending, then name), so every element is aligned.
"""
import argparse
import hashlib
import json
import re
import struct
import sys

import numpy as np

CHUNK = 1 << 24
E4M3_MAX = 448.0
NORM_RE = re.compile(r"(norm|\.scale$|gamma|layer_norm|layernorm)", re.I)
ESIZE = {"F32": 4, "BF16": 2, "F8_E4M3": 1}


def block_filter(man, blocks):
    """(name -> kept?, {group prefix: blocks kept}, [prefixes of every group]); --blocks as make_model.py."""
    groups = [g for g in man["repeat_groups"] if g.get("reduce", True)]
    ns = [g["count"] for g in groups] if blocks is None else [int(x) for x in str(blocks).split(",")]
    if len(ns) == 1:
        ns = ns * len(groups)
    if len(ns) != len(groups):
        sys.exit("--blocks: %d reducible groups (%s), got %d numbers" %
                 (len(groups), ", ".join(g["prefix"] for g in groups), len(ns)))
    keep = {}
    for g, n in zip(groups, ns):
        if not 0 <= n <= g["count"]:
            sys.exit("--blocks %d out of range for %s (real depth %d)" % (n, g["prefix"], g["count"]))
        keep[g["prefix"]] = n

    def ok(name):
        for p, n in keep.items():
            if name.startswith(p):
                return int(name[len(p):].split(".", 1)[0]) < n
        return True
    return ok, keep, [g["prefix"] for g in man["repeat_groups"]]


def init_kind(name, shape):
    if "pad_token" in name:
        return "pad"
    if all(d == 1 for d in shape[1:]):
        return "one" if NORM_RE.search(name) else "zero"
    return "normal"


def draw(name, shape, seed):
    """make_model.py's values of one tensor, as float32 chunks."""
    numel = int(np.prod(shape, dtype=np.int64))
    kind = init_kind(name, shape)
    if kind in ("one", "zero"):
        for done in range(0, numel, CHUNK):
            yield np.full(min(CHUNK, numel - done), 1.0 if kind == "one" else 0.0, np.float32)
        return
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])
    std = np.float32(0.02 if kind == "pad" else 1.0 / np.sqrt(numel // shape[0]))
    for done in range(0, numel, 1 << 26):  # make_model.py's draw size: the stream depends on it
        x = rng.standard_normal(min(1 << 26, numel - done), dtype=np.float32)
        x *= std
        for i in range(0, len(x), CHUNK):
            yield x[i:i + CHUNK]


def e4m3fn_exact(x):
    """float32 array -> uint8 float8_e4m3fn codes: nearest, ties to even, saturating (x finite)."""
    a = np.minimum(np.abs(x), np.float32(E4M3_MAX))
    u = a.view(np.uint32)
    # normals: round the 23-bit mantissa to 3 bits (a carry moves into the exponent), rebias 127 -> 7
    r = (u + np.uint32(0x7FFFF) + ((u >> np.uint32(20)) & np.uint32(1))) >> np.uint32(20)
    code = (r - np.uint32((127 - 7) << 3)).astype(np.uint8)
    # below 2^-6 the step is 2^-9: the code is the count of steps (rint is ties-to-even; 8 is 2^-6)
    sub = np.rint(a * np.float32(512.0)).astype(np.uint8)
    code = np.where(a < np.float32(2.0 ** -6), sub, code)
    return code | ((x.view(np.uint32) >> np.uint32(24)).astype(np.uint8) & np.uint8(0x80))


# The code of a float32 depends only on its top 16 bits and on whether any of the low 16 is set: the
# rounding point is at mantissa bit 20 or above, so the low bits only break ties. A table over those
# 2^17 keys, made by e4m3fn_exact, converts ~4x faster than the arithmetic.
_KEYS = np.arange(1 << 17, dtype=np.uint32)
_BITS = ((_KEYS >> np.uint32(1)) << np.uint32(16)) | (_KEYS & np.uint32(1))
_FINITE = (_BITS & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
E4M3_LUT = np.where(_FINITE, e4m3fn_exact(np.where(_FINITE, _BITS, 0).view(np.float32)), 0x7F).astype(np.uint8)


def to_e4m3fn(x):
    """As e4m3fn_exact, through the table (x float32, finite)."""
    half = x.view("<u2")  # little-endian halves: [low, high] per element
    key = half[1::2].astype(np.uint32) << np.uint32(1)
    key |= half[0::2] != 0
    return E4M3_LUT[key]


def e4m3fn_values():
    """float32 value of each of the 256 codes (NaN for 0x7f and 0xff)."""
    c = np.arange(256)
    e, m = (c >> 3) & 15, (c & 7).astype(np.float64)
    v = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8) * 2.0 ** (e - 7))
    v[(c & 0x7F) == 0x7F] = np.nan
    return np.where(c & 0x80, -v, v).astype(np.float32)


def to_bf16(x):
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype("<u2")


def plan(man, layout, ok, prefixes, drop_unused):
    """[(name, dtype, shape, source tensor or None, kind)]: kind "e4m3" / "scaled" / "bf16" / "scale" / "marker"."""
    out = []
    for n, e in man["tensors"].items():
        if not ok(n) or (drop_unused and e.get("unused")):
            continue
        s = e["shape"]
        if layout == "e4m3fn":
            out.append((n, "F8_E4M3", s, n, "e4m3"))
        elif len(s) == 2 and n.endswith(".weight") and any(n.startswith(p) for p in prefixes):
            out.append((n, "F8_E4M3", s, n, "scaled"))
            out.append((n[:-len("weight")] + "scale_weight", "F32", [], n, "scale"))
        else:
            out.append((n, "BF16", s, n, "bf16"))
    if layout == "scaled":
        out.append(("scaled_fp8", "F8_E4M3", [0], None, "marker"))
    out.sort(key=lambda t: (-ESIZE[t[1]], t[0]))  # the reference writer's order: aligned without padding
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--layout", choices=["e4m3fn", "scaled"], required=True)
    ap.add_argument("--blocks", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop-unused", action="store_true")
    a = ap.parse_args()

    man = json.load(open(a.manifest))
    ok, keep, prefixes = block_filter(man, a.blocks)
    items = plan(man, a.layout, ok, prefixes, a.drop_unused)

    header, off = {}, 0
    for n, dt, s, _, _ in items:
        nb = ESIZE[dt] * int(np.prod(s, dtype=np.int64))
        header[n] = {"dtype": dt, "shape": s, "data_offsets": [off, off + nb]}
        off += nb
    header["__metadata__"] = {"generator": "kiln bench make_fp8.py", "component": man["component"],
                              "blocks": json.dumps(keep), "seed": str(a.seed), "layout": a.layout}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)

    scales = {}  # weight name -> scale, computed in a first pass over its stream
    for n, _, s, src, kind in items:
        if kind == "scaled":
            amax = max(np.max(np.abs(c)) for c in draw(src, s, a.seed))
            scales[n] = amax / np.float32(E4M3_MAX) if amax > 0 else np.float32(1.0)
    nparams = 0
    with open(a.out, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n, dt, s, src, kind in items:
            if kind == "marker":
                continue
            if kind == "scale":
                f.write(np.array(scales[src], "<f4").tobytes())
                continue
            nparams += int(np.prod(s, dtype=np.int64))
            for c in draw(src, s, a.seed):
                if kind == "bf16":
                    f.write(to_bf16(c).tobytes())
                else:
                    f.write(to_e4m3fn(c / scales[n] if kind == "scaled" else c).tobytes())
        if f.tell() != 8 + len(hb) + off:
            sys.exit("%s: wrote %d bytes, the header says %d" % (a.out, f.tell(), 8 + len(hb) + off))
    print("%s: %d tensors, %d params, %s, blocks %s, %.2f GB" % (
        a.out, len(items), nparams, a.layout, json.dumps(keep), (8 + len(hb) + off) / 1e9))


if __name__ == "__main__":
    main()
