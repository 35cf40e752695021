#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_safetensors (corpus/safetensors/), fuzz_lora_keys
(corpus/lora/: LoRA files for fuzz_lora_keys.c's small Flux table) and fuzz_extra_paths
(corpus/extra_paths/).

Small files, valid and invalid, each reaching a different part of the reader,
so the fuzzer starts from the interesting shapes rather than from nothing.
Deterministic: rerunning rewrites the same bytes. Python stdlib only.
"""
import json
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
OUT = os.path.join(CORPUS, "safetensors")
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "U8": 1, "BOOL": 1}


def st_file(tensors, metadata=None, pad=True, fill=None):
    """A safetensors file from [(name, dtype, shape)], data laid out in order: a byte
    pattern, or every byte `fill` (0x3c: small finite floats, as LoRA factors must be)."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes(((off + i) * 37 & 0xFF) if fill is None else fill for i in range(n))
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


# fuzz_lora_keys.c's table: qkv [24, 8] (+ bias), proj [8, 8], linear1 [40, 8], final
# adaLN [16, 8], img_in [8, 4]; rank 2.
QKV, PROJ, L1, ADA, IMG = ("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj",
                           "single_blocks.0.linear1", "final_layer.adaLN_modulation.1", "img_in")
def lora_file(tensors):
    return st_file(tensors, fill=0x3C)


LORA_SEEDS = {
    "bfl_lora_alpha": lora_file([("diffusion_model.%s.lora_up.weight" % QKV, "F32", [24, 2]),
                               ("diffusion_model.%s.lora_down.weight" % QKV, "F32", [2, 8]),
                               ("diffusion_model.%s.alpha" % QKV, "F32", [])]),
    "diffusers_slices": lora_file([("transformer.transformer_blocks.0.attn.to_%s.lora_%s.weight" % (q, ab), "BF16",
                                  [8, 2] if ab == "B" else [2, 8]) for q in "qkv" for ab in "AB"] +
                                [("transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight", "F16", [2, 8]),
                                 ("transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight", "F16", [16, 2])]),
    "norm_out_swap": lora_file([("transformer.norm_out.linear.lora_A.weight", "F32", [2, 8]),
                              ("transformer.norm_out.linear.lora_B.weight", "F32", [16, 2])]),
    "loha_diff_bias": lora_file([("lycoris_%s.hada_w1_a" % PROJ.replace(".", "_"), "F32", [8, 2]),
                               ("lycoris_%s.hada_w1_b" % PROJ.replace(".", "_"), "F32", [2, 8]),
                               ("lycoris_%s.hada_w2_a" % PROJ.replace(".", "_"), "F32", [8, 2]),
                               ("lycoris_%s.hada_w2_b" % PROJ.replace(".", "_"), "F32", [2, 8]),
                               ("diffusion_model.%s.diff" % L1, "F32", [40, 8]),
                               ("diffusion_model.%s.diff_b" % QKV, "F32", [24])]),
    "lokr_dora": lora_file([("diffusion_model.%s.lokr_w1" % ADA, "F32", [4, 2]),
                          ("diffusion_model.%s.lokr_w2" % ADA, "F32", [4, 4]),
                          ("diffusion_model.%s.lora_up.weight" % PROJ, "F32", [8, 2]),
                          ("diffusion_model.%s.lora_down.weight" % PROJ, "F32", [2, 8]),
                          ("diffusion_model.%s.dora_scale" % PROJ, "F32", [8, 1])]),
    "img_in_reshape": lora_file([("diffusion_model.%s.lora_up.weight" % IMG, "F32", [8, 2]),
                               ("diffusion_model.%s.lora_down.weight" % IMG, "F32", [2, 6]),
                               ("diffusion_model.%s.reshape_weight" % IMG, "I64", [2])]),
    "unloaded_keys": lora_file([("text_encoders.clip_l.lora_up.weight", "F32", [2, 2]), ("x.alpha", "F32", [])]),
}

EXTRA_PATHS_SEEDS = {
    "comfyui_section": b"comfyui:\n  base_path: /data/models\n  is_default: true\n  checkpoints: checkpoints/\n"
                       b"  diffusion_models: |\n    diffusion_models\n    unet\n  text_encoders: clip/\n"
                       b"  vae: vae\n  loras: loras # comment\n  upscale_models: upscale_models\n",
    "two_roots": b"a:\n  vae: /x/vae\nb:\n  loras: /y/loras\n",
    "not_a_root": b"a:\n  vae: /x/decoders\n",
    "bad_lines": b"top\n  key without colon\n\t\n:\n  : |\n",
}


def write_all(folder, seeds):
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def main():
    write_all(OUT, SEEDS)
    write_all(os.path.join(CORPUS, "lora"), LORA_SEEDS)
    write_all(os.path.join(CORPUS, "extra_paths"), EXTRA_PATHS_SEEDS)


if __name__ == "__main__":
    main()
