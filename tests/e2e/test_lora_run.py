#!/usr/bin/env python3
"""End-to-end LoRA hot-swap through `kiln run` on the bundled tiny workflow.

    test_lora_run.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

One call renders four prompts that share the base model: no LoRA, LoRA A,
LoRA B, no LoRA again. Every image must be a plausible render; A and B must
change the image (and differ from each other); the last image must equal the
first bit for bit, so swapping LoRAs in and out left the base weights exactly
as the file has them. The sampler must have run again for the last prompt
(its `executed` list holds node 3): an image served from the cache would make
that comparison hollow. The LoRA files are written here (PEFT lora_A/lora_B
names on the DiT's attention and MLP linears).
"""
import json
import os
import shutil
import sys

from kiln_e2e import Checks, of_type, pixel_problems, png_pixels, read_header, run_kiln, write_safetensors

KILN, SRC, WORK, MODELS = sys.argv[1:5]
check = Checks()


def dit_shapes():
    path = os.path.join(MODELS, "diffusion_models", "qwen_image_fp8_e4m3fn.safetensors")
    with open(path, "rb") as f:
        return {k: v["shape"] for k, v in read_header(f).items() if k != "__metadata__"}


def make_lora(path, seed, rank=4):
    state = seed
    def rnd():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return ((state >> 33) / float(1 << 31) - 0.5) * 0.5
    tensors = {}
    for key, shape in dit_shapes().items():
        if len(shape) != 2 or not key.startswith("transformer_blocks.") or not key.endswith(".weight"):
            continue
        if ".attn." not in key and "_mlp." not in key:
            continue
        stem = "transformer." + key[: -len(".weight")]
        out_f, in_f = shape
        tensors[stem + ".lora_A.weight"] = ([rank, in_f], [rnd() for _ in range(rank * in_f)])
        tensors[stem + ".lora_B.weight"] = ([out_f, rank], [rnd() for _ in range(out_f * rank)])
    write_safetensors(path, tensors)


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    models = os.path.join(WORK, "models")
    os.makedirs(os.path.join(models, "loras"))
    for sub in ("diffusion_models", "text_encoders", "vae"):
        os.symlink(os.path.join(MODELS, sub), os.path.join(models, sub))
    make_lora(os.path.join(models, "loras", "style_a.safetensors"), 1)
    make_lora(os.path.join(models, "loras", "style_b.safetensors"), 2)

    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        base = json.load(f)
    files = []
    for name, lora in (("base1", None), ("a", "style_a.safetensors"), ("b", "style_b.safetensors"), ("base2", None)):
        prompt = json.loads(json.dumps(base))
        if lora:
            prompt["90"] = {"class_type": "LoraLoaderModelOnly",
                            "inputs": {"model": ["37", 0], "lora_name": lora, "strength_model": 1.0}}
            prompt["66"]["inputs"]["model"] = ["90", 0]
        prompt["60"]["inputs"]["filename_prefix"] = name
        path = os.path.join(WORK, name + ".api.json")
        with open(path, "w") as f:
            json.dump(prompt, f)
        files.append(path)

    out = os.path.join(WORK, "output")
    rc, ev, err = run_kiln(check, KILN, ["--models", models, "--output", out] + files, WORK)
    done = of_type(ev, "execution_success")
    if not check(rc == 0 and len(done) == 4, "kiln run with LoRA A, B and none in one call exits 0 (%s)" %
                 err.strip()[-300:]):
        return
    check("3" in done[3]["executed"], "the last base render runs the sampler again: %s" % done[3]["executed"])
    px = {}
    for name in ("base1", "a", "b", "base2"):
        png = os.path.join(out, name + "_00001_.png")
        if not check(os.path.exists(png), name + ": image written"):
            return
        w, h, c, px[name] = png_pixels(png)
        problems = pixel_problems(c, px[name])
        check(not problems, "%s: plausible %dx%d render %s" % (name, w, h, problems or ""))
    check(px["a"] != px["base1"], "LoRA A changes the image")
    check(px["b"] != px["a"], "LoRA B gives another image than A")
    check(px["base2"] == px["base1"], "after removing the LoRA the image equals the base render bit for bit")


main()
check.exit()
