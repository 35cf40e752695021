#!/usr/bin/env python3
"""End-to-end test of `kiln run` on the bundled Flux.1 workflows with the tiny Flux
set the build writes (no --models: the default models root, build/models).

    test_flux_run.py KILN SOURCE_DIR WORK_DIR

For flux_dev_t2i (UNETLoader, DualCLIPLoader type flux, CLIPTextEncode, FluxGuidance,
ModelSamplingFlux, SamplerCustomAdvanced) and flux_schnell_t2i (CLIPTextEncodeFlux,
ConditioningZeroOut, KSampler), ComfyUI's own workflows at 256x256:
- the API file renders a plausible 256x256 PNG (no flat channel, not stuck at
  black/white as NaN or inf leave it) whose "prompt" chunk is the prompt;
- the same prompt in another process writes the same bytes; another seed
  changes most pixel values;
- what the conditioning carries reaches the pixels: dev's prompt text and
  guidance, schnell's clip_l (pooled vector) and t5xxl (tokens) texts; schnell
  has no guidance_in, so its guidance changes nothing, as in ComfyUI;
- the UI file converts to its API twin (`kiln convert`) and renders the same
  pixels, its PNG carrying the UI graph as "workflow".
"""
import json
import os
import shutil
import subprocess
import sys

from kiln_e2e import Checks, changed_fraction, of_type, png_chunks, png_texts, render_pixels, run_kiln

KILN, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
check = Checks()

# family -> [(variant, class_type, inputs, expected effect)]: "other" pixels or the "same" pixels
VARIANTS = {
    "flux_dev_t2i": [
        ("another seed", "RandomNoise", {"noise_seed": 42}, "other"),
        ("another prompt", "CLIPTextEncode", {"text": "a lighthouse on a cliff at dusk, oil painting"}, "other"),
        ("guidance 1.5", "FluxGuidance", {"guidance": 1.5}, "other"),
    ],
    "flux_schnell_t2i": [
        ("another seed", "KSampler", {"seed": 42}, "other"),
        ("another clip_l text", "CLIPTextEncodeFlux", {"clip_l": "a lighthouse on a cliff at dusk"}, "other"),
        ("another t5xxl text", "CLIPTextEncodeFlux", {"t5xxl": "An oil painting of a lighthouse at dusk."}, "other"),
        ("guidance 1.5 (schnell has no guidance_in)", "CLIPTextEncodeFlux", {"guidance": 1.5}, "same"),
    ],
}


def workflow(name, fmt):
    return os.path.join(SRC, "workflows", "%s.%s.json" % (name, fmt))


def edited(prompt, class_type, inputs):
    """A copy of prompt with inputs set on its one node of class_type."""
    p = json.loads(json.dumps(prompt))
    (node,) = [n for n in p.values() if n["class_type"] == class_type]
    node["inputs"].update(inputs)
    return p


def render(files, output):
    """Runs the files in one `kiln run` (shared models and cache); returns each prompt's PNG path."""
    out = os.path.join(WORK, output)
    rc, ev, err = run_kiln(check, KILN, ["--output", out] + files, WORK)
    done = of_type(ev, "execution_success")
    check(rc == 0 and len(done) == len(files), "%s: %d prompts render (exit %d) %s" %
          (output, len(files), rc, err.strip()[-300:] if rc else ""))
    if len(done) != len(files):
        check.exit()
    paths = []
    for d in done:
        (image,) = [o["images"][0] for o in d["outputs"].values()]
        paths.append(os.path.join(out, image["subfolder"], image["filename"]))
    return paths


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
apis = {name: json.load(open(workflow(name, "api"))) for name in VARIANTS}

# 1. each API file and its variants, all in one process
files, labels = [], []
for name, variants in VARIANTS.items():
    files.append(workflow(name, "api"))
    labels.append((name, None))
    for i, (what, class_type, inputs, _) in enumerate(variants):
        path = os.path.join(WORK, "%s_%d.json" % (name, i))
        with open(path, "w") as f:
            json.dump(edited(apis[name], class_type, inputs), f)
        files.append(path)
        labels.append((name, i))
pngs = dict(zip(labels, render(files, "output")))

for name, variants in VARIANTS.items():
    png = pngs[(name, None)]
    base = render_pixels(check, png, name)
    check(len(base) == 256 * 256 * 3, "%s: 256x256 RGB" % name)
    check(json.loads(png_texts(png).get("prompt", "null")) == apis[name], "%s: 'prompt' chunk is the prompt" % name)
    for i, (what, _, _, effect) in enumerate(variants):
        px = render_pixels(check, pngs[(name, i)], "%s, %s" % (name, what))
        changed = changed_fraction(base, px)
        if effect == "same":
            check(px == base, "%s, %s: the same pixels" % (name, what))
        else:  # random tiny weights: a change that reaches the DiT moves nearly every value
            check(changed > 0.5, "%s, %s: %.0f%% of the pixel values change" % (name, what, 100 * changed))

# 2. the same API prompts in a new process: the same files byte for byte
again = render([workflow(name, "api") for name in VARIANTS], "again")
for name, png in zip(VARIANTS, again):
    with open(pngs[(name, None)], "rb") as a, open(png, "rb") as b:
        check(a.read() == b.read(), "%s: same prompt, another process: the same PNG byte for byte" % name)

# 3. the UI files: converted to their API twins, rendered to the same pixels
for name in VARIANTS:
    p = subprocess.run([KILN, "convert", "--compact", workflow(name, "ui")], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode == 0 and json.loads(p.stdout or "null") == apis[name],
          "kiln convert %s.ui.json gives its API twin" % name)
ui = render([workflow(name, "ui") for name in VARIANTS], "ui")
for name, png in zip(VARIANTS, ui):
    texts = png_texts(png)
    check(json.loads(texts.get("workflow", "null")) == json.load(open(workflow(name, "ui"))),
          "%s.ui.json: PNG 'workflow' chunk is the UI graph" % name)
    check(json.loads(texts.get("prompt", "null")) == apis[name], "%s.ui.json: 'prompt' chunk is the API twin" % name)
    image = [c for c in png_chunks(open(png, "rb").read()) if c[0] in (b"IHDR", b"IDAT")]
    check(image == [c for c in png_chunks(open(pngs[(name, None)], "rb").read()) if c[0] in (b"IHDR", b"IDAT")],
          "%s.ui.json: the API file's image data exactly" % name)

check.exit()
