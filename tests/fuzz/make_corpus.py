#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors into corpus/safetensors/.

Small files, valid and invalid, each reaching a different part of the reader,
so the fuzzer starts from the interesting shapes rather than from nothing.
Deterministic: rerunning rewrites the same bytes. Python stdlib only.
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "safetensors")
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "U8": 1, "BOOL": 1}


def st_file(tensors, metadata=None, pad=True):
    """A safetensors file from [(name, dtype, shape)], data laid out in order."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((off + i) * 37 & 0xFF for i in range(n))
        off += n
    return framed(json.dumps(header, separators=(",", ":")).encode(), data, pad)


def framed(header, data=b"", pad=True):
    if pad:  # writers pad the header with spaces to keep the data 8-byte aligned
        header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def entry(name, dtype, shape, offsets):
    return json.dumps({name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}}).encode()


SEEDS = {
    "valid_f32": st_file([("model.w", "F32", [2, 3])]),
    "valid_dtypes": st_file([(d.lower() + ".w", d, [2]) for d in SIZES]),
    "valid_fp8_scaled": st_file([("blk.0.weight", "F8_E4M3", [4, 4]), ("blk.0.scale_weight", "F32", []),
                                 ("blk.1.weight", "F8_E5M2", [8]), ("blk.1.scale_weight", "BF16", [])]),
    "valid_empty_and_scalar": st_file([("e", "F32", [0]), ("e2", "BF16", [3, 0]), ("s", "F32", [])]),
    "valid_metadata_only": st_file([], {"format": "pt", "modelspec.title": "seed"}),
    "valid_unpadded": st_file([("u", "U8", [3])], pad=False),
    "bad_overlap": framed(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                          b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)),
    "bad_lying_size": framed(entry("w", "F32", [4], [0, 8]), bytes(8)),
    "bad_truncated_data": framed(entry("w", "F32", [4], [0, 16]), bytes(8)),
    "bad_dtype": framed(entry("w", "Q4_0", [4], [0, 4]), bytes(4)),
    "bad_shape_overflow": framed(entry("w", "F32", [4294967296, 4294967296], [0, 0])),
    "bad_header_length": struct.pack("<Q", 2**64 - 4) + b"{}",
    # Regressions: zero bytes, yet the strides overflow int64; a scale read from an odd address.
    "bad_zero_dim_strides": framed(entry("w", "F32", [0, 2**32, 2**32], [0, 0])),
    "valid_misaligned_f64_scale": framed(b'{"a.weight":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]},'
                                         b'"a.scale_weight":{"dtype":"F64","shape":[],"data_offsets":[1,9]}}',
                                         bytes(9)),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
