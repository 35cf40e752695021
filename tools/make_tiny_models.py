#!/usr/bin/env python3
"""Write the tiny random-weight model sets (stdlib only, deterministic).

    make_tiny_models.py OUT_DIR VAE_SRC

OUT_DIR gets ComfyUI's model folders.

Every file carries the name ComfyUI's templates use for the real model, so a workflow renders with
this set and with the real files unchanged; the dtypes are the tiny set's own (bf16/f16 where the
real Qwen-Image files are fp8: Kiln reads either).

Qwen-Image:
  diffusion_models/qwen_image_fp8_e4m3fn.safetensors       the DiT, real key names, bf16
  diffusion_models/qwen_image_edit_fp8_e4m3fn.safetensors  the same DiT under the Qwen-Image-Edit names
  diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors
  text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors      Qwen2.5-VL text model ("model.") and vision
                                                           tower ("visual."), bf16
  vae/qwen_image_vae.safetensors                           VAE_SRC copied as is (real keys)
  loras/Qwen-Image-Lightning-8steps-V1.0.safetensors       a rank-4 PEFT LoRA on the DiT's blocks

Flux.1 LoRA:
  loras/flux_dev_example_lora.safetensors                  a rank-4 kohya LoRA on the Flux DiT's blocks

Flux.1 (the real files' names, so ComfyUI's own Flux workflows run on them):
  diffusion_models/flux1-dev.safetensors         the DiT with guidance_in.*, bf16
  diffusion_models/flux1-schnell.safetensors     the same without guidance_in.*, bf16
  text_encoders/clip_l.safetensors               CLIP-L text model + text_projection, f16
  text_encoders/t5xxl_fp16.safetensors           T5 encoder, f16
  vae/ae.safetensors                             the Flux AutoencoderKL, encoder + decoder, bf16

Z-Image Turbo (the real files' names; its VAE is Flux's ae.safetensors above):
  diffusion_models/z_image_turbo_bf16.safetensors  the NextDiT, ComfyUI/Lumina2 keys, bf16
  text_encoders/qwen_3_4b.safetensors              Qwen3-4B text model, "model." keys, bf16

Sizes keep the family constants the runtime assumes because no weight records
them (shared/README.md, the constants rule). Qwen-Image: DiT head_dim 128 (RoPE
axes 16+56+56), patch 2, 16 latent channels, 256 timestep channels; text
encoder vocab 152064, 28 query heads x 128 and 4 kv heads (ComfyUI detects
Qwen2.5-VL-7B by the 512-wide k_proj bias). Flux: DiT head_dim 128, patch 2,
16 latent channels, 256 timestep channels; CLIP-L head_dim 64, vocab 49408,
77 positions; T5 d_kv 64, 32 relative-attention buckets, vocab 32128; VAE
ch 32 (the smallest width with the real 32 GroupNorm groups), ch_mult 1,2,4,4,
2 res blocks. Z-Image: DiT head_dim 128 (q_norm/k_norm 128 wide, dim 2 heads),
RoPE axes 32+48+48, patch 2, 16 latent channels, 256 timestep channels, the
t_embedder / adaLN widths min(dim, 1024) / min(dim, 256) (so dim >= 256 keeps
them real), 2 noise and 2 context refiners, pad tokens; text encoder vocab
151936, 32 query heads x 128 and 8 kv heads x 128 with q/k norms and no
biases (ComfyUI tells Qwen3-4B by its width, Kiln a narrower file by these
heads). Only the widths the runtime reads from the weights are small
(shared/e2e/e2e_flux_dev's tiny_sizes for Flux). Weights are pseudo-random,
seeded by tensor name, so every build writes identical files.
"""
import json
import math
import os
import random
import shutil
import struct
import sys
import zlib

TE_VOCAB, TE_HIDDEN, TE_INTER, TE_LAYERS = 152064, 32, 64, 2
TE_HEADS, TE_KV_HEADS, HEAD_DIM = 28, 4, 128
VIS_HIDDEN, VIS_INTER, VIS_DEPTH = 128, 64, 8  # 16 heads of 8
DIT_DIM, DIT_MLP, DIT_LAYERS, DIT_IN, DIT_OUT, TIME_CH = 2 * HEAD_DIM, 512, 2, 16 * 4, 16 * 4, 256

FLUX_DIM, FLUX_MLP, FLUX_DOUBLE, FLUX_SINGLE = HEAD_DIM, HEAD_DIM, 2, 2
CLIP_VOCAB, CLIP_POSITIONS, CLIP_HIDDEN, CLIP_INTER, CLIP_LAYERS = 49408, 77, 64, 128, 2
T5_VOCAB, T5_BUCKETS, T5_D_KV, T5_DIM, T5_HEADS, T5_FF, T5_LAYERS = 32128, 32, 64, 16, 1, 32, 2
VAE_CH, VAE_MULT, VAE_RES_BLOCKS, LATENT_CH = 32, (1, 2, 4, 4), 2, 16

Q3_VOCAB, Q3_HIDDEN, Q3_INTER, Q3_LAYERS, Q3_HEADS, Q3_KV_HEADS = 151936, 16, 32, 3, 32, 8
ZI_DIM, ZI_FFN, ZI_LAYERS, ZI_REFINERS = 2 * HEAD_DIM, 256, 2, 2

BIAS_FAN_IN = 1024  # biases: the magnitude of a linear layer's weights with this fan-in


# The byte holding the sign and the top of the exponent, from a random byte b, for values of
# random sign and mantissa with |x| in [2^e, 2^(e+2)): bf16 needs e odd (its low byte holds the
# exponent's last bit), f16 takes that bit and 2 mantissa bits from b.
HIGH_BYTE = {
    "BF16": lambda e, b: (b & 0x80) | ((e + 127) >> 1),
    "F16": lambda e, b: (b & 0x80) | ((e + 15 + ((b >> 2) & 1)) << 2) | (b & 3),
}
PACK = {"BF16": lambda v: struct.pack("<f", v)[2:], "F16": lambda v: struct.pack("<e", v)}


def random_values(name, n, dtype, e):
    """n 16-bit values of random sign and mantissa, |x| in [2^e, 2^(e+2))."""
    rng = random.Random(zlib.crc32(name.encode()))
    low = rng.randbytes(n)
    table = bytes(HIGH_BYTE[dtype](e, b) for b in range(256))
    high = rng.randbytes(n).translate(table)
    out = bytearray(2 * n)
    out[0::2] = low
    out[1::2] = high
    return bytes(out)


def qwen_exponent(fan_in):
    """The Qwen-Image set's magnitudes: [2^-5, 2^-3) for fan-in <= 64, else [2^-7, 2^-5)."""
    return -5 if fan_in <= 64 else -7


def torch_like_exponent(fan_in):
    """The odd e whose [2^e, 2^(e+2)) is centred nearest 1/sqrt(fan_in), torch's init scale."""
    return 2 * round((-0.5 * math.log2(fan_in) - 2) / 2) + 1


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, bytes)."""
    header, offset = {}, 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
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
            f.write(tensors[name][2])
    os.replace(tmp, path)


class Builder:
    """One file's tensors, all of one dtype; exponent(fan_in) sets the magnitudes."""

    def __init__(self, dtype="BF16", exponent=qwen_exponent):
        self.t, self.dtype, self.exponent = {}, dtype, exponent

    def random(self, name, shape, fan_in):
        n = math.prod(shape)
        self.t[name] = (self.dtype, list(shape), random_values(name, n, self.dtype, self.exponent(fan_in)))

    def weight(self, name, rows, cols, fan_in=None):
        self.random(name, [rows, cols], fan_in or cols)

    def linear(self, name, rows, cols, bias=True):
        self.weight(name + ".weight", rows, cols)
        if bias:
            self.random(name + ".bias", [rows], BIAS_FAN_IN)

    def conv(self, name, out_ch, in_ch, k):
        self.random(name + ".weight", [out_ch, in_ch, k, k], in_ch * k * k)
        self.random(name + ".bias", [out_ch], BIAS_FAN_IN)

    def ones(self, name, n):
        self.t[name] = (self.dtype, [n], PACK[self.dtype](1.0) * n)

    def norm(self, name, n):
        """A LayerNorm/GroupNorm: weight ones, small random bias."""
        self.ones(name + ".weight", n)
        self.random(name + ".bias", [n], BIAS_FAN_IN)


# ---- Qwen-Image ---------------------------------------------------------------------------

def qwen_text_encoder():
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


def qwen_vision(b):
    """Qwen2.5-VL's vision tower ("visual.*", beside "model.*" in the real text-encoder file): the
    real 16 heads, 14-px patches (Conv3d over 2 frames), 8 blocks so that block 7 is one of the
    full-attention ones, the merger's output as wide as the text model."""
    d, p = VIS_HIDDEN, "visual."
    b.random(p + "patch_embed.proj.weight", [d, 3, 2, 14, 14], 3 * 2 * 14 * 14)
    for i in range(VIS_DEPTH):
        blk = f"{p}blocks.{i}."
        b.ones(blk + "norm1.weight", d)
        b.ones(blk + "norm2.weight", d)
        b.linear(blk + "attn.qkv", 3 * d, d)
        b.linear(blk + "attn.proj", d, d)
        b.linear(blk + "mlp.gate_proj", VIS_INTER, d)
        b.linear(blk + "mlp.up_proj", VIS_INTER, d)
        b.linear(blk + "mlp.down_proj", d, VIS_INTER)
    b.ones(p + "merger.ln_q.weight", d)
    b.linear(p + "merger.mlp.0", 4 * d, 4 * d)
    b.linear(p + "merger.mlp.2", TE_HIDDEN, 4 * d)


def qwen_vl_text_encoder():
    """The text model with the vision tower Qwen-Image-Edit's nodes use."""
    b = Builder()
    b.t = qwen_text_encoder()
    qwen_vision(b)
    return b.t


def qwen_dit():
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


# ---- Flux.1 -------------------------------------------------------------------------------

def flux_dit(guidance):
    """comfy/ldm/flux/model.py's keys; dev has guidance_in, schnell has not."""
    b = Builder(exponent=torch_like_exponent)
    d = FLUX_DIM
    b.linear("img_in", d, DIT_IN)
    b.linear("txt_in", d, T5_DIM)
    for embedder, width in (("time_in", TIME_CH), ("vector_in", CLIP_HIDDEN)) + ((("guidance_in", TIME_CH),) if guidance else ()):
        b.linear(embedder + ".in_layer", d, width)
        b.linear(embedder + ".out_layer", d, d)
    for i in range(FLUX_DOUBLE):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            b.linear(p + "mod.lin", 6 * d, d)
            b.linear(p + "attn.qkv", 3 * d, d)
            b.linear(p + "attn.proj", d, d)
            b.ones(p + "attn.norm.query_norm.scale", HEAD_DIM)
            b.ones(p + "attn.norm.key_norm.scale", HEAD_DIM)
            b.linear(p + "mlp.0", FLUX_MLP, d)
            b.linear(p + "mlp.2", d, FLUX_MLP)
    for i in range(FLUX_SINGLE):
        p = f"single_blocks.{i}."
        b.linear(p + "modulation.lin", 3 * d, d)
        b.linear(p + "linear1", 3 * d + FLUX_MLP, d)
        b.linear(p + "linear2", d, d + FLUX_MLP)
        b.ones(p + "norm.query_norm.scale", HEAD_DIM)
        b.ones(p + "norm.key_norm.scale", HEAD_DIM)
    b.linear("final_layer.adaLN_modulation.1", 2 * d, d)
    b.linear("final_layer.linear", DIT_OUT, d)
    return b.t


def clip_l():
    """transformers' CLIPTextModel keys as in ComfyUI's clip_l.safetensors."""
    b = Builder("F16", torch_like_exponent)
    h, p = CLIP_HIDDEN, "text_model."
    b.weight(p + "embeddings.token_embedding.weight", CLIP_VOCAB, h, fan_in=1)
    b.weight(p + "embeddings.position_embedding.weight", CLIP_POSITIONS, h, fan_in=4)
    for i in range(CLIP_LAYERS):
        layer = f"{p}encoder.layers.{i}."
        b.norm(layer + "layer_norm1", h)
        b.norm(layer + "layer_norm2", h)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            b.linear(layer + "self_attn." + proj, h, h)
        b.linear(layer + "mlp.fc1", CLIP_INTER, h)
        b.linear(layer + "mlp.fc2", h, CLIP_INTER)
    b.norm(p + "final_layer_norm", h)
    b.weight("text_projection.weight", h, h)
    return b.t


def t5_xxl():
    """transformers' T5EncoderModel keys; heads = relative_attention_bias columns."""
    b = Builder("F16", torch_like_exponent)
    inner = T5_HEADS * T5_D_KV
    b.weight("shared.weight", T5_VOCAB, T5_DIM, fan_in=1)
    for i in range(T5_LAYERS):
        p = f"encoder.block.{i}.layer."
        for proj in ("q", "k", "v"):
            b.linear(p + "0.SelfAttention." + proj, inner, T5_DIM, bias=False)
        b.linear(p + "0.SelfAttention.o", T5_DIM, inner, bias=False)
        if i == 0:
            b.weight(p + "0.SelfAttention.relative_attention_bias.weight", T5_BUCKETS, T5_HEADS, fan_in=1)
        b.ones(p + "0.layer_norm.weight", T5_DIM)
        b.linear(p + "1.DenseReluDense.wi_0", T5_FF, T5_DIM, bias=False)
        b.linear(p + "1.DenseReluDense.wi_1", T5_FF, T5_DIM, bias=False)
        b.linear(p + "1.DenseReluDense.wo", T5_DIM, T5_FF, bias=False)
        b.ones(p + "1.layer_norm.weight", T5_DIM)
    b.ones("encoder.final_layer_norm.weight", T5_DIM)
    return b.t


def flux_vae():
    """comfy/ldm/modules/diffusionmodules/model.py Encoder + Decoder (ae.safetensors keys)."""
    b = Builder(exponent=torch_like_exponent)

    def resnet(p, cin, cout):
        b.norm(p + "norm1", cin)
        b.conv(p + "conv1", cout, cin, 3)
        b.norm(p + "norm2", cout)
        b.conv(p + "conv2", cout, cout, 3)
        if cin != cout:
            b.conv(p + "nin_shortcut", cout, cin, 1)

    def mid(p, c):
        resnet(p + "mid.block_1.", c, c)
        b.norm(p + "mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            b.conv(p + "mid.attn_1." + proj, c, c, 1)
        resnet(p + "mid.block_2.", c, c)

    widths = [VAE_CH * m for m in VAE_MULT]
    levels = len(widths)
    c = VAE_CH
    b.conv("encoder.conv_in", c, 3, 3)
    for i, w in enumerate(widths):
        for j in range(VAE_RES_BLOCKS):
            resnet(f"encoder.down.{i}.block.{j}.", c, w)
            c = w
        if i < levels - 1:
            b.conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder.", c)
    b.norm("encoder.norm_out", c)
    b.conv("encoder.conv_out", 2 * LATENT_CH, c, 3)
    b.conv("decoder.conv_in", c, LATENT_CH, 3)
    mid("decoder.", c)
    for i in reversed(range(levels)):
        for j in range(VAE_RES_BLOCKS + 1):
            resnet(f"decoder.up.{i}.block.{j}.", c, widths[i])
            c = widths[i]
        if i > 0:
            b.conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    b.norm("decoder.norm_out", c)
    b.conv("decoder.conv_out", 3, c, 3)
    return b.t


# ---- Z-Image Turbo -----------------------------------------------------------------------

def qwen3_4b():
    """transformers' Qwen3 keys as in ComfyUI's qwen_3_4b.safetensors: no biases, q/k norms."""
    b = Builder(exponent=torch_like_exponent)
    h, q, kv = Q3_HIDDEN, Q3_HEADS * HEAD_DIM, Q3_KV_HEADS * HEAD_DIM
    b.weight("model.embed_tokens.weight", Q3_VOCAB, h, fan_in=1)
    for i in range(Q3_LAYERS):
        p = f"model.layers.{i}."
        b.ones(p + "input_layernorm.weight", h)
        b.ones(p + "post_attention_layernorm.weight", h)
        b.linear(p + "self_attn.q_proj", q, h, bias=False)
        b.linear(p + "self_attn.k_proj", kv, h, bias=False)
        b.linear(p + "self_attn.v_proj", kv, h, bias=False)
        b.linear(p + "self_attn.o_proj", h, q, bias=False)
        b.ones(p + "self_attn.q_norm.weight", HEAD_DIM)
        b.ones(p + "self_attn.k_norm.weight", HEAD_DIM)
        b.linear(p + "mlp.gate_proj", Q3_INTER, h, bias=False)
        b.linear(p + "mlp.up_proj", Q3_INTER, h, bias=False)
        b.linear(p + "mlp.down_proj", h, Q3_INTER, bias=False)
    b.ones("model.norm.weight", h)
    return b.t


def z_image_dit():
    """comfy/ldm/lumina/model.py NextDiT keys (z_image_turbo_bf16.safetensors)."""
    b = Builder(exponent=torch_like_exponent)
    d, t_hidden, t_emb = ZI_DIM, min(ZI_DIM, 1024), min(ZI_DIM, TIME_CH)
    b.linear("x_embedder", d, DIT_IN)
    b.weight("x_pad_token", 1, d, fan_in=1)
    b.weight("cap_pad_token", 1, d, fan_in=1)
    b.ones("cap_embedder.0.weight", Q3_HIDDEN)
    b.linear("cap_embedder.1", d, Q3_HIDDEN)
    b.linear("t_embedder.mlp.0", t_hidden, TIME_CH)
    b.linear("t_embedder.mlp.2", t_emb, t_hidden)

    def block(p, modulated):
        b.linear(p + "attention.qkv", 3 * d, d, bias=False)
        b.linear(p + "attention.out", d, d, bias=False)
        b.ones(p + "attention.q_norm.weight", HEAD_DIM)
        b.ones(p + "attention.k_norm.weight", HEAD_DIM)
        for norm in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            b.ones(p + norm + ".weight", d)
        b.linear(p + "feed_forward.w1", ZI_FFN, d, bias=False)
        b.linear(p + "feed_forward.w2", d, ZI_FFN, bias=False)
        b.linear(p + "feed_forward.w3", ZI_FFN, d, bias=False)
        if modulated:
            b.linear(p + "adaLN_modulation.0", 4 * d, t_emb)

    for i in range(ZI_LAYERS):
        block(f"layers.{i}.", True)
    for i in range(ZI_REFINERS):
        block(f"noise_refiner.{i}.", True)
        block(f"context_refiner.{i}.", False)
    b.linear("final_layer.adaLN_modulation.1", d, t_emb)
    b.linear("final_layer.linear", DIT_OUT, d)
    return b.t


# ---- LoRAs --------------------------------------------------------------------------------

LORA_RANK = 4


def lora(dit, key_of, up_down):
    """A rank-4 LoRA on every 2-D block weight of a tiny DiT. key_of(k) gives the LoRA's name for
    checkpoint key k (k without ".weight"); up_down names its (down, up) pair. Small magnitudes, so
    the image changes without blowing up."""
    b = Builder(exponent=lambda fan_in: -7)
    for key, (_, shape, _) in sorted(dit.items()):
        if len(shape) != 2 or not key.endswith(".weight") or "blocks." not in key:
            continue
        stem = key_of(key[: -len(".weight")])
        out_f, in_f = shape
        b.weight(f"{stem}.{up_down[0]}.weight", LORA_RANK, in_f)
        b.weight(f"{stem}.{up_down[1]}.weight", out_f, LORA_RANK)
    return b.t


def qwen_lora():
    """PEFT/diffusers names under transformer. (as the Lightning LoRAs are published)."""
    return lora(qwen_dit(), lambda k: "transformer." + k, ("lora_A", "lora_B"))


def flux_lora():
    """kohya names (lora_unet_<key with _>), as ComfyUI's Flux example LoRA."""
    return lora(flux_dit(guidance=True), lambda k: "lora_unet_" + k.replace(".", "_"), ("lora_down", "lora_up"))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, vae_src = sys.argv[1], sys.argv[2]
    files = {
        "diffusion_models/qwen_image_fp8_e4m3fn.safetensors": qwen_dit,
        "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors": qwen_vl_text_encoder,
        "loras/Qwen-Image-Lightning-8steps-V1.0.safetensors": qwen_lora,
        "loras/flux_dev_example_lora.safetensors": flux_lora,
        "diffusion_models/flux1-dev.safetensors": lambda: flux_dit(guidance=True),
        "diffusion_models/flux1-schnell.safetensors": lambda: flux_dit(guidance=False),
        "text_encoders/clip_l.safetensors": clip_l,
        "text_encoders/t5xxl_fp16.safetensors": t5_xxl,
        "vae/ae.safetensors": flux_vae,
        "diffusion_models/z_image_turbo_bf16.safetensors": z_image_dit,
        "text_encoders/qwen_3_4b.safetensors": qwen3_4b,
    }
    for name, build in files.items():
        write_safetensors(os.path.join(out, name), build())
    # The Qwen-Image-Edit checkpoints are the Qwen-Image DiT trained further: same keys and shapes.
    for edit in ("qwen_image_edit_fp8_e4m3fn", "qwen_image_edit_2509_fp8_e4m3fn"):
        shutil.copyfile(os.path.join(out, "diffusion_models", "qwen_image_fp8_e4m3fn.safetensors"),
                        os.path.join(out, "diffusion_models", edit + ".safetensors"))
    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    shutil.copyfile(vae_src, os.path.join(out, "vae", "qwen_image_vae.safetensors"))


if __name__ == "__main__":
    main()
