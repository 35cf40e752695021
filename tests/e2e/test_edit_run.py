#!/usr/bin/env python3
"""End-to-end test of `kiln run` on the Qwen-Image-Edit workflows with the tiny Qwen-Image
set the build writes (its text encoder carries a tiny vision tower).

    test_edit_run.py KILN SOURCE_DIR WORK_DIR MODELS_DIR [--sanitized]

- The bundled workflows/qwen_image_edit.api.json (LoadImage, ImageScaleToTotalPixels lanczos,
  VAEEncode, TextEncodeQwenImageEdit with image and VAE, ModelSamplingAuraFlow, CFGNorm,
  KSampler, on the PNG that ships beside it) renders a plausible image; another seed changes
  most pixel values (one-step variants, CFG 1, to keep the test short: every edit render
  carries the ~1-Mpx reference latent and ~1300 image tokens the node makes); its UI file
  converts to it and renders the same image data in another process (one step, CFG 1).
- What the Edit nodes feed the sampler reaches it, measured on the sampled latent (SaveLatent)
  against the unchanged prompt's: another input image (the
  picture mirrored: vision tower and reference latent), another edit instruction, a second
  reference latent through ReferenceLatent, a ConditioningCombine of two encodes. The tiny
  random DiT reads its conditioning only weakly (the Qwen-Image t2i set moves ~1e-3 for a new
  prompt; the edit prompt's ~1400 image-dominated tokens move less), so these are latent-level
  checks; at denoise 0.5 the input image also starts the sampler and moves the pixels.
  CFGNorm at strength 0 zeroes the guided prediction, so the seed no longer matters.
- Errors name the node and input: an Edit encode on Flux's text encoders ("takes no images", input
  clip), and on a Qwen2.5-VL file without the vision tower (input image).
- Both shared workflows (tests/fixtures/workflows/qwen_image_edit*.api.json, ComfyUI's own:
  FluxKontextImageScale and TextEncodeQwenImageEditPlus in the 2509 one) run unchanged with
  their file names present (a models folder of links to the tiny set under the real names and
  the input image under theirs), one sampler step each to keep the 1-Mpx latents quick.

--sanitized (the ASan/UBSan build, several times slower): the bundled prompt in one step, the
errors and the 2509 workflow only.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib

from kiln_e2e import Checks, changed_fraction, of_type, png_chunks, png_pixels, png_texts, read_safetensors, \
    render_pixels, run_kiln

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
SANITIZED = "--sanitized" in sys.argv[5:]
check = Checks()
IMAGE = "image_qwen_image_edit_input_image.png"
API = os.path.join(SRC, "workflows", "qwen_image_edit.api.json")
UI = os.path.join(SRC, "workflows", "qwen_image_edit.ui.json")
SHARED = os.path.join(SRC, "tests", "fixtures", "workflows")


def write_png(path, width, height, rgb):
    """An 8-bit RGB PNG of the pixel bytes."""
    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write(name, doc):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def render(files, output, extra=()):
    """Runs the files in one `kiln run`; returns each prompt's PNG path (exits on failure)."""
    out = os.path.join(WORK, output)
    rc, ev, err = run_kiln(check, KILN, ["--input", os.path.join(WORK, "input"), "--output", out] + list(extra) + files,
                           WORK)
    done = of_type(ev, "execution_success")
    failed = of_type(ev, "execution_error")
    why = failed[0]["exception_message"][-300:] if failed else err.strip()[-300:]
    check(rc == 0 and len(done) == len(files), "%s: %d prompts render (exit %d) %s" %
          (output, len(files), rc, why if rc else ""))
    if len(done) != len(files):
        check.exit()
    paths = []
    for d in done:
        (image,) = [o["images"][0] for o in d["outputs"].values() if "images" in o]
        paths.append(os.path.join(out, image["subfolder"], image["filename"]))
    return paths


def image_data(path):
    return [c for c in png_chunks(open(path, "rb").read()) if c[0] in (b"IHDR", b"IDAT")]


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(os.path.join(WORK, "input"))
for name in (IMAGE, "image_qwen_image_edit_2509_input_image.png"):
    shutil.copy(os.path.join(SRC, "workflows", IMAGE), os.path.join(WORK, "input", name))
w, h, c, px = png_pixels(os.path.join(SRC, "workflows", IMAGE))
mirrored = b"".join(px[(y * w + w - 1 - x) * 3:(y * w + w - x) * 3] for y in range(h) for x in range(w))
write_png(os.path.join(WORK, "input", "mirrored.png"), w, h, mirrored)
api = json.load(open(API))


def variant(changes, base=None):
    """A copy of base (the bundled prompt) with {node: {input: value}} changes; unknown ids are added nodes."""
    p = json.loads(json.dumps(base or api))
    for node, inputs in changes.items():
        if node in p:
            p[node]["inputs"].update(inputs)
        else:
            p[node] = inputs
    return p


def one_step(changes, name=None):
    """A one-step, CFG-1 variant (CFGNorm still applies); SaveLatent writes its latent as lat/<name>."""
    v = variant(changes, variant({"3": {"steps": 1, "cfg": 1.0}}))
    if name:
        v["99"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "lat/" + name}}
    return v


def latent(name):
    t, _ = read_safetensors(os.path.join(WORK, "output", "lat", name + "_00001_.latent"))
    return t["latent_tensor"].values


def rel_l2(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)) / max(sum(x * x for x in b), 1e-30))


def bundled_checks():
    """Sections 1 and 2 (see the module docstring)."""
    # 1. the bundled prompt and the one-step variants, in one process
    latent_variants = [
        ("another input image", {"78": {"image": "mirrored.png"}}),
        ("another instruction", {"76": {"prompt": "Turn the sea into a desert at night."}}),
        ("a second reference latent (ReferenceLatent)",
         {"90": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["76", 0], "latent": ["88", 0]}},
          "3": {"positive": ["90", 0]}}),
        ("ConditioningCombine of the edit and another encode",
         {"91": {"class_type": "TextEncodeQwenImageEdit", "inputs": {"clip": ["38", 0], "prompt": "a boat"}},
          "92": {"class_type": "ConditioningCombine",
                 "inputs": {"conditioning_1": ["76", 0], "conditioning_2": ["91", 0]}},
          "3": {"positive": ["92", 0]}}),
    ]
    prompts = [one_step({}, "base"), one_step({"3": {"seed": 42}})]
    prompts += [one_step(v, "v%d" % i) for i, (_, v) in enumerate(latent_variants)]
    to_i2i = {"steps": 2, "denoise": 0.5}  # starts at a sigma below 1: the VAE-encoded input shows through
    prompts += [one_step({"3": to_i2i}), one_step({"3": to_i2i, "78": {"image": "mirrored.png"}}),
                one_step({"75": {"strength": 0.0}}), one_step({"75": {"strength": 0.0}, "3": {"seed": 42}})]
    pngs = render([API] + [write("variant_%d.json" % i, p) for i, p in enumerate(prompts)], "output")
    render_pixels(check, pngs[0], "qwen_image_edit")
    check(json.loads(png_texts(pngs[0]).get("prompt", "null")) == api, "PNG 'prompt' chunk is the prompt")
    one = render_pixels(check, pngs[1], "one step")
    seed = render_pixels(check, pngs[2], "one step, another seed")
    moved = changed_fraction(one, seed)
    check(moved > 0.5, "another seed moves %.0f%% of the pixel values" % (100 * moved))
    for i, (what, _) in enumerate(latent_variants):
        e = rel_l2(latent("v%d" % i), latent("base"))
        check(e > 0, "%s: the sampled latent moves (rel L2 %.2e)" % (what, e))
    i2i = [render_pixels(check, pngs[-4 + k], "denoise 0.5" + (", mirrored input" if k else "")) for k in range(2)]
    # the sky and sea rows are symmetric: a mirror moves only part of the picture
    moved = changed_fraction(i2i[0], i2i[1])
    check(moved > 0.25, "denoise 0.5: the mirrored input image moves %.0f%% of the pixel values" % (100 * moved))
    zero = [render_pixels(check, pngs[-2 + k], "CFGNorm strength 0" + (", another seed" if k else ""))
            for k in range(2)]
    check(zero[0] == zero[1] and changed_fraction(zero[0], one) > 0.5,
          "CFGNorm strength 0: the guided prediction is 0, the seed no longer matters")

    # 2. the UI file in another process (one step, CFG 1): its API twin, the one-step variant's image data
    p = subprocess.run([KILN, "convert", "--compact", UI], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and json.loads(p.stdout or "null") == api,
          "kiln convert qwen_image_edit.ui.json gives its API twin")
    ui = render([UI], "ui", ["--set", "3.steps=1", "--set", "3.cfg=1.0"])
    check(image_data(ui[0]) == image_data(pngs[1]), "qwen_image_edit.ui.json, another process: the same image data")


if SANITIZED:
    render_pixels(check, render([write("one_step.json", one_step({}))], "output")[0], "qwen_image_edit, one step")
else:
    bundled_checks()

def strip_vision(src, dst):
    """A copy of a safetensors file without its visual.* tensors (bytes kept as stored)."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    keep, blobs, off = {}, [], 0
    for name, h in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name.startswith("visual."):
            continue
        a, b = h["data_offsets"]
        keep[name] = dict(h, data_offsets=[off, off + b - a])
        blobs.append(data[a:b])
        off += b - a
    if meta is not None:
        keep["__metadata__"] = meta
    text = json.dumps(keep).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# 3. errors that name the node and input
errors = os.path.join(WORK, "error_models")
for sub in ("diffusion_models", "vae", "text_encoders"):
    os.makedirs(os.path.join(errors, sub))
for name in ("diffusion_models/flux1-dev.safetensors", "diffusion_models/qwen_image_edit_fp8_e4m3fn.safetensors",
             "vae/qwen_image_vae.safetensors",
             "text_encoders/clip_l.safetensors", "text_encoders/t5xxl_fp16.safetensors"):
    os.symlink(os.path.join(MODELS, name), os.path.join(errors, name))
strip_vision(os.path.join(MODELS, "text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),
             os.path.join(errors, "text_encoders", "qwen_2.5_vl_text_only.safetensors"))
no_tower = variant({"38": {"clip_name": "qwen_2.5_vl_text_only.safetensors"}, "3": {"steps": 1}})
flux_clip = variant({"37": {"unet_name": "flux1-dev.safetensors"}, "3": {"steps": 1}})
flux_clip["38"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                               "clip_name2": "t5xxl_fp16.safetensors",
                                                               "type": "flux", "device": "default"}}
for what, prompt, node, input_name, says in (
        ("Flux's text encoders", flux_clip, "77", "clip", "takes no images"),
        ("a Qwen2.5-VL file without visual.*", no_tower, "77", "image", "no vision tower")):
    rc, ev, err = run_kiln(check, KILN, ["--models", errors, "--input", os.path.join(WORK, "input"), "--output",
                                         os.path.join(WORK, "errors"), write("error.json", prompt)], WORK)
    fail = of_type(ev, "execution_error")
    msg = fail[0]["exception_message"] if fail else (ev[-1] if ev else err)
    check(rc == 1 and fail and fail[0]["node_id"] == node and "'%s'" % input_name in msg and says in msg,
          "an Edit encode on %s fails naming node %s and input %s: %s" % (what, node, input_name, str(msg)[-200:]))

# 4. ComfyUI's own Edit workflows with their file names present
models = os.path.join(WORK, "models")
LINKS = {"text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
         "diffusion_models/qwen_image_edit_fp8_e4m3fn.safetensors": "diffusion_models/qwen_image_edit_fp8_e4m3fn.safetensors",
         "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors": "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors",
         "vae/qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors"}
for name, target in LINKS.items():
    os.makedirs(os.path.dirname(os.path.join(models, name)), exist_ok=True)
    os.symlink(os.path.join(MODELS, target), os.path.join(models, name))
for name in ("qwen_image_edit_2509",) if SANITIZED else ("qwen_image_edit", "qwen_image_edit_2509"):
    png = render([os.path.join(SHARED, name + ".api.json")], "shared_" + name,
                 ["--models", models, "--set", "3.steps=1"])[0]
    render_pixels(check, png, name)
    sw, sh, _, _ = png_pixels(png)
    check(sw * sh >= 900 * 900, "%s (ComfyUI's file, one step): %dx%d, the ~1 Mpx edit size" % (name, sw, sh))

check.exit()
