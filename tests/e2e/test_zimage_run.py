#!/usr/bin/env python3
"""End-to-end test of `kiln run` on Z-Image Turbo with the tiny Z-Image set the build
writes (MODELS_DIR, build/models, the default models root: z_image_turbo_bf16,
qwen_3_4b and ae under ComfyUI's names).

    test_zimage_run.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

z_image_turbo_t2i (UNETLoader, CLIPLoader type lumina2, CLIPTextEncode,
ConditioningZeroOut, EmptySD3LatentImage, ModelSamplingAuraFlow, KSampler with
res_multistep / simple at cfg 1), ComfyUI's template at 256x256, gets the bundled
workflow checks (kiln_e2e.check_bundled): a plausible render carrying its prompt,
the seed, the prompt text and the shift move most pixel values, the same prompt in
another process writes the same bytes, the UI file converts to its API twin and
renders the same image.

z_image_turbo_subgraph (ComfyUI's template as the frontend saves it, with its
subgraph: tests/fixtures/workflows, unchanged but for the size, set to 256 with
--set) renders from both files, the UI one converting to the API prompt. Its
positive is ConditioningCombine of the prompt and a second text, which ComfyUI
samples as the mean of the two entries' predictions, so:
- its image differs from the t2i render of the prompt alone;
- combining the prompt with itself gives that t2i render exactly ((d + d) / 2 = d);
- the entries in the other order give the same image.

A LoRA in the diffusers names Z-Image LoRAs are trained with (PEFT under
transformer.: attention.to_q/to_k/to_v, slices of the fused qkv, to_out.0,
feed_forward.w1-3, adaLN_modulation.0, all_x_embedder.2-1,
all_final_layer.2-1.linear) through LoraLoaderModelOnly on the t2i workflow, in
a copy of MODELS_DIR with a loras/ folder: every key loads, the image changes,
and the next render without it is the base image bit for bit.
"""
import json
import os
import random
import sys

from kiln_e2e import Checks, changed_fraction, check_bundled, edited, image_data, png_texts, read_header, render, \
    render_pixels, write_safetensors

KILN, SRC, WORK, MODELS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
check = Checks()

VARIANTS = {
    "z_image_turbo_t2i": [
        ("another seed", "KSampler", {"seed": 42}, "other"),
        ("another prompt", "CLIPTextEncode", {"text": "a lighthouse on a cliff at dusk, oil painting"}, "other"),
        ("shift 6", "ModelSamplingAuraFlow", {"shift": 6}, "other"),
    ],
}
t2i = check_bundled(check, KILN, SRC, WORK, VARIANTS)["z_image_turbo_t2i"]

subgraph = os.path.join(SRC, "tests", "fixtures", "workflows", "z_image_turbo_subgraph")
api = json.load(open(subgraph + ".api.json"))
prompt_link, other_link = (api["57:63"]["inputs"][k] for k in ("conditioning_1", "conditioning_2"))
files = [subgraph + ".api.json", subgraph + ".ui.json"]
for name, inputs in (("self", {"conditioning_2": prompt_link}),
                     ("swapped", {"conditioning_1": other_link, "conditioning_2": prompt_link})):
    files.append(os.path.join(WORK, "subgraph_%s.json" % name))
    with open(files[-1], "w") as f:
        json.dump(edited(api, "ConditioningCombine", inputs), f)
sub_api, sub_ui, sub_self, sub_swapped = render(check, KILN, WORK, files, "subgraph",
                                                ["--set", "57:13.width=256", "--set", "57:13.height=256"])

px = render_pixels(check, sub_api, "z_image_turbo_subgraph")
check(len(px) == 256 * 256 * 3, "z_image_turbo_subgraph: 256x256 RGB")
check(json.loads(png_texts(sub_ui).get("prompt", "null")) == json.loads(png_texts(sub_api).get("prompt", "null")),
      "z_image_turbo_subgraph.ui.json: its prompt is the API file's")
check(image_data(sub_ui) == image_data(sub_api), "z_image_turbo_subgraph.ui.json: the API file's image data exactly")
changed = changed_fraction(render_pixels(check, t2i, "z_image_turbo_t2i"), px)
check(changed > 0.5, "the combined second text moves %.0f%% of the pixel values" % (100 * changed))
check(image_data(sub_self) == image_data(t2i), "the prompt combined with itself: the t2i image exactly")
check(image_data(sub_swapped) == image_data(sub_api), "the combined entries in the other order: the same image")



def diffusers_lora(path, rank=4, seed=1):
    """A PEFT LoRA in diffusers names on the tiny DiT's linears (shapes from its header)."""
    with open(os.path.join(MODELS, "diffusion_models", "z_image_turbo_bf16.safetensors"), "rb") as f:
        shapes = {k: v["shape"] for k, v in read_header(f).items() if k != "__metadata__"}
    rows = shapes["x_embedder.weight"][0]
    names = {"x_embedder": "all_x_embedder.2-1", "final_layer.linear": "all_final_layer.2-1.linear"}
    modules = []  # (diffusers name, out, in)
    for key, shape in sorted(shapes.items()):
        stem = key[:-len(".weight")]
        if stem.endswith(".attention.qkv"):
            modules += [(stem[:-3] + "to_" + p, rows, shape[1]) for p in "qkv"]
        elif stem.endswith(".attention.out"):
            modules.append((stem[:-3] + "to_out.0", shape[0], shape[1]))
        elif ".feed_forward." in stem or stem.endswith("adaLN_modulation.0") or stem in names:
            modules.append((names.get(stem, stem), shape[0], shape[1]))
    rng = random.Random(seed)

    def factor(shape):
        return shape, [rng.uniform(-0.25, 0.25) for _ in range(shape[0] * shape[1])]
    tensors = {}
    for name, out_f, in_f in modules:
        tensors["transformer.%s.lora_A.weight" % name] = factor([rank, in_f])
        tensors["transformer.%s.lora_B.weight" % name] = factor([out_f, rank])
    write_safetensors(path, tensors)
    return len(modules)


models = os.path.join(WORK, "models")
os.makedirs(os.path.join(models, "loras"))
for folder in ("diffusion_models", "text_encoders", "vae"):
    os.symlink(os.path.join(MODELS, folder), os.path.join(models, folder))
n_modules = diffusers_lora(os.path.join(models, "loras", "zimage_diffusers.safetensors"))
t2i_api = json.load(open(os.path.join(SRC, "workflows", "z_image_turbo_t2i.api.json")))
with_lora = json.loads(json.dumps(t2i_api))
with_lora["40"] = {"class_type": "LoraLoaderModelOnly",
                   "inputs": {"model": ["28", 0], "lora_name": "zimage_diffusers.safetensors", "strength_model": 1.0}}
with_lora["11"]["inputs"]["model"] = ["40", 0]
files = [os.path.join(WORK, "lora_%s.json" % name) for name in ("base", "on", "off")]
for path, prompt in zip(files, (t2i_api, with_lora, t2i_api)):
    with open(path, "w") as f:
        json.dump(prompt, f)
log = []
base, on, off = render(check, KILN, WORK, files, "lora", ["--models", models], log)
check(n_modules > 30 and "not loaded" not in log[0],
      "all %d diffusers-named modules of the LoRA load %s" % (n_modules, log[0].strip()[-300:]))
changed = changed_fraction(render_pixels(check, base, "no LoRA"), render_pixels(check, on, "with the LoRA"))
check(changed > 0.5, "the LoRA moves %.0f%% of the pixel values" % (100 * changed))
check(image_data(off) == image_data(base), "the LoRA removed: the base image bit for bit")

check.exit()
