#!/usr/bin/env python3
"""Write a tiny random-weight Qwen-Image model set (stdlib only, deterministic).

    make_tiny_models.py OUT_DIR VAE_SRC

OUT_DIR gets ComfyUI's model folders:
  diffusion_models/qwen_image_tiny.safetensors   the DiT, real key names, bf16
  text_encoders/qwen_2.5_vl_tiny.safetensors     Qwen2.5-VL text model, "model." keys, bf16
  vae/qwen_image_vae.safetensors                 VAE_SRC copied as is (real keys)

Sizes keep the family constants the runtime assumes because no weight records
them: DiT head_dim 128 (RoPE axes 16+56+56), patch 2, 16 latent channels,
256 timestep channels; text encoder vocab 152064 (the real tokenizer's ids
must index it), 28 query heads x 128 and 4 kv heads (ComfyUI detects
Qwen2.5-VL-7B by the 512-wide k_proj bias). Only the widths the runtime reads
from the weights are small (text hidden 32, DiT width 256, 2 layers each).
Weights are pseudo-random bf16 seeded by tensor name, so every build writes
identical files.
"""
import json
import os
import random
import shutil
import struct
import sys
import zlib

TE_VOCAB, TE_HIDDEN, TE_INTER, TE_LAYERS = 152064, 32, 64, 2
TE_HEADS, TE_KV_HEADS, HEAD_DIM = 28, 4, 128
DIT_DIM, DIT_MLP, DIT_LAYERS, DIT_IN, DIT_OUT, TIME_CH = 2 * HEAD_DIM, 512, 2, 16 * 4, 16 * 4, 256


def bf16_random(name, n, fan_in):
    """n bf16 values of random sign and mantissa, magnitude near 1/sqrt(fan_in)."""
    rng = random.Random(zlib.crc32(name.encode()))
    low = rng.randbytes(n)
    # high byte = sign | top 7 exponent bits: 0x3C gives |x| in [2^-7, 2^-5), 0x3D in [2^-5, 2^-3)
    hi = 0x3D if fan_in <= 64 else 0x3C
    table = bytes(hi | (b & 0x80) for b in range(256))
    high = rng.randbytes(n).translate(table)
    out = bytearray(2 * n)
    out[0::2] = low
    out[1::2] = high
    return bytes(out)


def bf16_const(value, n):
    bits = struct.unpack("<I", struct.pack("<f", value))[0] >> 16
    return struct.pack("<H", bits) * n


def write_safetensors(path, tensors):
    """tensors: name -> (shape, bf16 bytes)."""
    header, offset = {}, 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = {"format": "pt", "kiln": "tiny random test model"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name][1])
    os.replace(tmp, path)


class Builder:
    def __init__(self):
        self.t = {}

    def weight(self, name, rows, cols):
        self.t[name] = ([rows, cols], bf16_random(name, rows * cols, cols))

    def linear(self, name, rows, cols, bias=True):
        self.weight(name + ".weight", rows, cols)
        if bias:
            self.t[name + ".bias"] = ([rows], bf16_random(name + ".bias", rows, 1024))

    def ones(self, name, n):
        self.t[name] = ([n], bf16_const(1.0, n))


def text_encoder():
    b = Builder()
    q, kv = TE_HEADS * HEAD_DIM, TE_KV_HEADS * HEAD_DIM
    b.weight("model.embed_tokens.weight", TE_VOCAB, TE_HIDDEN)
    for i in range(TE_LAYERS):
        p = f"model.layers.{i}."
        b.ones(p + "input_layernorm.weight", TE_HIDDEN)
        b.ones(p + "post_attention_layernorm.weight", TE_HIDDEN)
        b.linear(p + "self_attn.q_proj", q, TE_HIDDEN)
        b.linear(p + "self_attn.k_proj", kv, TE_HIDDEN)
        b.linear(p + "self_attn.v_proj", kv, TE_HIDDEN)
        b.linear(p + "self_attn.o_proj", TE_HIDDEN, q, bias=False)
        b.linear(p + "mlp.gate_proj", TE_INTER, TE_HIDDEN, bias=False)
        b.linear(p + "mlp.up_proj", TE_INTER, TE_HIDDEN, bias=False)
        b.linear(p + "mlp.down_proj", TE_HIDDEN, TE_INTER, bias=False)
    b.ones("model.norm.weight", TE_HIDDEN)
    return b.t


def dit():
    b = Builder()
    d = DIT_DIM
    b.linear("img_in", d, DIT_IN)
    b.linear("txt_in", d, TE_HIDDEN)
    b.ones("txt_norm.weight", TE_HIDDEN)
    b.linear("time_text_embed.timestep_embedder.linear_1", d, TIME_CH)
    b.linear("time_text_embed.timestep_embedder.linear_2", d, d)
    for i in range(DIT_LAYERS):
        p = f"transformer_blocks.{i}."
        b.linear(p + "img_mod.1", 6 * d, d)
        b.linear(p + "txt_mod.1", 6 * d, d)
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            b.linear(p + "attn." + name, d, d)
        b.linear(p + "attn.to_out.0", d, d)
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            b.ones(p + "attn." + name + ".weight", HEAD_DIM)
        for stream in ("img_mlp", "txt_mlp"):
            b.linear(p + stream + ".net.0.proj", DIT_MLP, d)
            b.linear(p + stream + ".net.2", d, DIT_MLP)
    b.linear("norm_out.linear", 2 * d, d)
    b.linear("proj_out", DIT_OUT, d)
    return b.t


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, vae_src = sys.argv[1], sys.argv[2]
    write_safetensors(os.path.join(out, "diffusion_models", "qwen_image_tiny.safetensors"), dit())
    write_safetensors(os.path.join(out, "text_encoders", "qwen_2.5_vl_tiny.safetensors"), text_encoder())
    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    shutil.copyfile(vae_src, os.path.join(out, "vae", "qwen_image_vae.safetensors"))


if __name__ == "__main__":
    main()
