#!/usr/bin/env python3
"""End-to-end test of EasyCache and LazyCache (pipelines/sampling/stepcache.h)
on the tiny model sets, every family through the one shared sampling path:

    test_stepcache_run.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Each bundled text-to-image workflow at 64x64 is run with its sampler's latent
saved, uncached and with a cache node before the sampler (the KSampler's, or
BasicGuider's for SamplerCustomAdvanced). Per case:
- reuse_threshold 0 never skips and gives the uncached latent bit for bit;
- the threshold given skips the stated number of steps (ComfyUI's log line;
  the tiny models' cumulative change rates stay >= 7% off the threshold, so
  the count does not hang on a rounding), and the cached latent moves from
  the uncached one by a relative L2 within the stated bound (the measured
  drift, rounded up).
Z-Image runs at CFG 1 (one forward per step) and at CFG 4, where ComfyUI
batches [uncond, cond] and the uncond leads the decision. The bundled
z_image_turbo_easycache workflow renders too, its UI file converting to it."""
import json
import os
import subprocess
import sys

from kiln_e2e import Checks, run_kiln
from stepcache_e2e import cached_prompt, latent, rel_l2, skips

KILN, SRC, WORK, MODELS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
check = Checks()

# (workflow, cfg (None: as it is), steps, cache, threshold, skipped, drift bound)
CASES = [
    ("z_image_turbo_t2i", None, 20, "EasyCache", 0.6, 5, 0.07),
    ("z_image_turbo_t2i", None, 20, "LazyCache", 0.3, 3, 0.11),
    ("z_image_turbo_t2i", 4.0, 12, "EasyCache", 0.8, 3, 0.23),
    ("qwen_image_t2i", None, 12, "EasyCache", 0.4, 7, 0.052),
    ("flux_schnell_t2i", None, 12, "EasyCache", 0.4, 4, 0.072),
    ("flux_dev_t2i", None, 12, "EasyCache", 0.4, 4, 0.057),
]


def base(workflow, cfg, steps):
    api = json.load(open(os.path.join(SRC, "workflows", workflow + ".api.json")))
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=64, height=64)
        if n["class_type"] in ("KSampler", "BasicScheduler"):
            n["inputs"]["steps"] = steps
        if n["class_type"] == "KSampler" and cfg is not None:
            n["inputs"]["cfg"] = cfg
    return api


os.makedirs(WORK, exist_ok=True)
files, runs = [], []  # runs: (prefix, case index, cache, threshold)
for i, (workflow, cfg, steps, cache, threshold, _, _) in enumerate(CASES):
    api = base(workflow, cfg, steps)
    for c, t in ((None, None), (cache, 0.0), (cache, threshold)):
        prefix = "case%d_%s_%s" % (i, c or "none", t)
        files.append(os.path.join(WORK, prefix + ".json"))
        with open(files[-1], "w") as f:
            json.dump(cached_prompt(api, c, prefix, **({"reuse_threshold": t} if c else {})), f)
        runs.append((prefix, i, c, t))

out = os.path.join(WORK, "out")
for f in os.listdir(out) if os.path.isdir(out) else []:
    os.remove(os.path.join(out, f))
rc, _, err = run_kiln(check, KILN, ["--models", MODELS, "--output", out] + files, WORK, json_mode=False)
check(rc == 0, "%d prompts run (exit %d) %s" % (len(files), rc, err.strip()[-300:] if rc else ""))
if rc:
    check.exit()
logged = iter(skips(err))
for i, (workflow, cfg, steps, cache, threshold, want_skips, bound) in enumerate(CASES):
    name = "%s%s %s" % (workflow, " cfg %g" % cfg if cfg else "", cache)
    plain, zero, cached = [latent(out, p) for p, j, _, _ in runs if j == i]
    check(next(logged) == (0, steps), "%s threshold 0: skips no step" % name)
    check(zero == plain, "%s threshold 0: the uncached latent bit for bit" % name)
    got = next(logged)
    check(got == (want_skips, steps), "%s threshold %g: skipped %d/%d steps (want %d)" %
          (name, threshold, got[0], got[1], want_skips))
    drift = rel_l2(cached, plain)
    check(0 < drift < bound, "%s threshold %g: relative L2 drift %.4f from the uncached latent (bound %g)" %
          (name, threshold, drift, bound))

# the bundled example (Z-Image Turbo, EasyCache at ComfyUI's defaults, 8 steps) renders; the tiny
# model's change rates (~0.8 a step) stay above the default threshold 0.2
example = os.path.join(SRC, "workflows", "z_image_turbo_easycache.api.json")
rc, _, err = run_kiln(check, KILN, ["--models", MODELS, "--output", out, "--set", "13.width=64", "--set",
                                    "13.height=64", example], WORK, json_mode=False)
check(rc == 0 and skips(err) == [(0, 8)] and "EasyCache enabled - threshold: 0.2, start_percent: 0.15, "
      "end_percent: 0.95" in err, "z_image_turbo_easycache.api.json renders, logging as ComfyUI does")
conv = subprocess.run([KILN, "convert", example.replace(".api.json", ".ui.json")], capture_output=True, text=True)
check(conv.returncode == 0 and json.loads(conv.stdout or "null") == json.load(open(example)),
      "z_image_turbo_easycache.ui.json converts to its API twin")
check.exit()
