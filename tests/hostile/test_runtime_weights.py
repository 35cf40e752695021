#!/usr/bin/env python3
"""Broken weight and LoRA files are refused at their loader node (issue 16, faults 7 and 9).

- A rank-0 LoRA (lora_A [0, in], lora_B [out, 0]) was accepted by LoraLoaderModelOnly and failed
  only at KSampler: it is refused by the loader node, naming the node, lora_name, file and key.
- A LoRA factor or alpha holding NaN or inf is refused when the file is loaded, naming the file
  and the tensor (a NaN factor used to reach the sampler and turn the image to NaN).
- A model file (here the VAE) holding a NaN or inf is refused by its loader node, naming the file
  and tensor (kn_st_check_finite, once per load).

usage: test_runtime_weights.py KILN SOURCE_DIR WORK_DIR MODELS"""
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from kiln_e2e import Checks, of_type, read_header, run_kiln, write_safetensors  # noqa: E402

KILN, SRC, WORK, MODELS = sys.argv[1:5]
check = Checks()


def first_linear():
    path = os.path.join(MODELS, "diffusion_models", "qwen_image_fp8_e4m3fn.safetensors")
    with open(path, "rb") as f:
        header = read_header(f)
    key = next(k for k in header if k.startswith("transformer_blocks.0.attn.to_q") and k.endswith(".weight"))
    return "transformer." + key[: -len(".weight")], header[key]["shape"]


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    models = os.path.join(WORK, "models")
    os.makedirs(os.path.join(models, "loras"))
    for sub in ("diffusion_models", "text_encoders", "vae"):
        os.symlink(os.path.join(MODELS, sub), os.path.join(models, sub))
    stem, (out_f, in_f) = first_linear()
    loras = {
        "rank0": {stem + ".lora_A.weight": ([0, in_f], []), stem + ".lora_B.weight": ([out_f, 0], [])},
        "nan": {stem + ".lora_A.weight": ([2, in_f], [0.01] * (2 * in_f - 1) + [float("nan")]),
                stem + ".lora_B.weight": ([out_f, 2], [0.01] * (2 * out_f))},
        "inf": {stem + ".lora_A.weight": ([2, in_f], [0.01] * (2 * in_f)),
                stem + ".lora_B.weight": ([out_f, 2], [float("-inf")] + [0.01] * (2 * out_f - 1))},
    }
    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        base = json.load(f)
    files = []
    for name, tensors in loras.items():
        write_safetensors(os.path.join(models, "loras", name + ".safetensors"), tensors)
        prompt = json.loads(json.dumps(base))
        prompt["90"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": ["37", 0], "lora_name": name + ".safetensors", "strength_model": 1.0}}
        prompt["66"]["inputs"]["model"] = ["90", 0]
        prompt["60"]["inputs"]["filename_prefix"] = name
        files.append(os.path.join(WORK, name + ".api.json"))
        with open(files[-1], "w") as f:
            json.dump(prompt, f)

    out = os.path.join(WORK, "output")
    for path, name in zip(files, loras):
        rc, ev, err = run_kiln(check, KILN, ["--models", models, "--output", out, path], WORK)
        errors = of_type(ev, "execution_error")
        e = errors[0] if errors else {}
        msg = e.get("exception_message", "")
        check(rc == 1 and e.get("node_id") == "90" and "lora_name" in msg and name + ".safetensors" in msg
              and stem in msg, "%s: refused at the LoRA loader, naming input, file and key: %s"
              % (name, json.dumps(e)[:400]))
        if name != "rank0":
            check("NaN" in msg or "inf" in msg, "%s: the message says what is wrong: %s" % (name, msg[:200]))


def poisoned_vae(models, value):
    """The tiny VAE with `value` (f32 bits, or bf16/f16 as stored) in its first float tensor."""
    src = os.path.join(MODELS, "vae", "qwen_image_vae.safetensors")
    data = bytearray(open(src, "rb").read())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] in ("F32", "BF16", "F16"))
    at = 8 + n + info["data_offsets"][0] + 2 * struct.calcsize("<f")  # element 2 (4 bytes) or 4 (2 bytes)
    if info["dtype"] == "F32":
        data[at:at + 4] = struct.pack("<f", value)
    else:
        bits = {"BF16": (0x7FC0, 0x7F80), "F16": (0x7E00, 0x7C00)}[info["dtype"]][0 if value != value else 1]
        data[at:at + 2] = struct.pack("<H", bits)
    os.makedirs(os.path.join(models, "vae"), exist_ok=True)
    with open(os.path.join(models, "vae", "qwen_image_vae.safetensors"), "wb") as f:
        f.write(data)
    return name


def test_weights():
    for label, value in (("nan", float("nan")), ("inf", float("inf"))):
        models = os.path.join(WORK, "models_" + label)
        shutil.rmtree(models, ignore_errors=True)
        os.makedirs(models)
        for sub in ("diffusion_models", "text_encoders"):
            os.symlink(os.path.join(MODELS, sub), os.path.join(models, sub))
        tensor = poisoned_vae(models, value)
        rc, ev, err = run_kiln(check, KILN, ["--models", models, "--output", os.path.join(WORK, "out_" + label),
                                             os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")], WORK)
        # checked when VAELoader loads the file (validation reads headers only)
        errors = of_type(ev, "execution_error")
        e = errors[0] if errors else {}
        msg = e.get("exception_message", "")
        check(rc == 1 and e.get("node_id") == "39" and e.get("node_type") == "VAELoader" and "vae_name" in msg
              and "qwen_image_vae" in msg and "'%s'" % tensor in msg and ("NaN" if label == "nan" else "inf") in msg,
              "%s in a VAE weight: refused by VAELoader naming input, file and tensor: %s" % (label, msg[:300]))

main()
test_weights()
check.exit()
