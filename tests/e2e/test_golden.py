#!/usr/bin/env python3
"""Whole-workflow golden test: `kiln run` on one shared/e2e folder against
what ComfyUI computed for it.

    test_golden.py KILN FOLDER WORK_DIR

FOLDER is an unchanged copy of shared/e2e/<case>: models/ (a ComfyUI models
folder), workflow.api.json, expected.safetensors and meta.json. The workflow
runs as given plus one SaveLatent node on the latent the SaveImage's
VAEDecode decodes (the sampler's output), so both ends of the pipeline are
compared, with the tolerances meta.json states (a missing one is a failure):
 - the .latent file's latent_tensor against out.latent: relative L2 <=
   latent_rel_l2;
 - the PNG pixels against out.image_u8: max |diff| <= image_u8_max_abs_diff
   and the fraction of differing values <= image_u8_frac_diff.
out.image_f32 cannot be read back from a PNG; the uint8 comparison stands in.
The .latent file must also be ComfyUI's format (latent_format_version_0
marker, "prompt" metadata holding the prompt that ran).
"""
import json
import math
import os
import shutil
import sys

from kiln_e2e import Checks, of_type, png_pixels, read_safetensors, run_kiln

KILN, FOLDER, WORK = sys.argv[1:4]
LATENT_NODE = "kiln_golden_latent"
check = Checks()


def with_save_latent(prompt):
    """The prompt plus a SaveLatent on the latent decoded for the (single) SaveImage."""
    saves = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
    if not check(len(saves) == 1, "workflow has one SaveImage (%s)" % saves):
        return None
    decode = prompt[saves[0]]["inputs"]["images"][0]
    if not check(prompt[decode]["class_type"] == "VAEDecode", "SaveImage shows a VAEDecode (node %s)" % decode):
        return None
    out = dict(prompt)
    out[LATENT_NODE] = {"class_type": "SaveLatent",
                        "inputs": {"samples": prompt[decode]["inputs"]["samples"], "filename_prefix": "golden"}}
    return saves[0], out


def rel_l2(got, ref):
    num = math.fsum((a - b) ** 2 for a, b in zip(got, ref))
    den = math.fsum(b * b for b in ref)
    return math.sqrt(num / den) if den > 0 else math.inf


def main():
    with open(os.path.join(FOLDER, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(FOLDER, "workflow.api.json")) as f:
        prompt = json.load(f)
    expected, _ = read_safetensors(os.path.join(FOLDER, "expected.safetensors"))
    tol = meta.get("tolerance", {})
    keys = ("latent_rel_l2", "image_u8_max_abs_diff", "image_u8_frac_diff")
    if not check(all(k in tol for k in keys), "meta.json states the tolerances %s" % ", ".join(keys)):
        return
    derived = with_save_latent(prompt)
    if not derived:
        return
    save_image, prompt = derived

    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    path = os.path.join(WORK, "workflow.api.json")
    with open(path, "w") as f:
        json.dump(prompt, f)
    rc, events, err = run_kiln(check, KILN, ["--models", os.path.join(FOLDER, "models"), "--output",
                                             os.path.join(WORK, "output"), path], cwd=WORK)
    done = of_type(events, "execution_success")
    if not check(rc == 0 and len(done) == 1, "%s renders (exit %d) %s" % (meta["family"], rc, err.strip()[-300:])):
        return
    outputs = {e["node"]: e["paths"] for e in of_type(events, "executed")}

    # the latent: ComfyUI's .latent layout, then the numbers
    latents = outputs.get(LATENT_NODE, [])
    if not check(len(latents) == 1, "SaveLatent wrote one file: %s" % latents):
        return
    lat, lat_meta = read_safetensors(latents[0])
    marker = lat.get("latent_format_version_0")
    check(marker is not None and marker.dtype == "F32" and marker.shape == [0], "latent_format_version_0 marker")
    check(lat_meta.get("prompt", "").isascii() and json.loads(lat_meta.get("prompt", "null")) == prompt,
          "'prompt' metadata is json.dumps of the prompt that ran")
    got, ref = lat.get("latent_tensor"), expected["out.latent"]
    if check(got is not None and got.shape == ref.shape, "latent shape %s, expected %s" %
             (got.shape if got else None, ref.shape)):
        err_l2 = rel_l2(got.values, ref.values)
        check(err_l2 <= tol["latent_rel_l2"], "latent rel L2 %.3e <= %g" % (err_l2, tol["latent_rel_l2"]))

    # the pixels, image by image of the batch
    ref = expected["out.image_u8"]
    batch, height, width, channels = ref.shape
    pngs = outputs.get(save_image, [])
    if not check(len(pngs) == batch, "SaveImage wrote %d PNG(s), expected %d" % (len(pngs), batch)):
        return
    per_image = height * width * channels
    for b, png in enumerate(pngs):
        w, h, c, px = png_pixels(png)
        if not check((h, w, c) == (height, width, channels), "%s: %dx%dx%d, expected %dx%dx%d" %
                     (os.path.basename(png), h, w, c, height, width, channels)):
            continue
        want = ref.values[b * per_image:(b + 1) * per_image]
        diffs = [abs(x - y) for x, y in zip(px, want)]
        worst, frac = max(diffs), sum(1 for d in diffs if d) / len(diffs)
        check(worst <= tol["image_u8_max_abs_diff"], "image %d: max |diff| %d <= %d" %
              (b, worst, tol["image_u8_max_abs_diff"]))
        check(frac <= tol["image_u8_frac_diff"], "image %d: fraction of values differing %.3e <= %g" %
              (b, frac, tol["image_u8_frac_diff"]))


main()
check.exit()
