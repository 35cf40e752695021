"""Step-cache runs of the bundled workflows (EasyCache / LazyCache before the
sampler), shared by tests/e2e/test_stepcache_run.py and bench/stepcache.py."""
import glob
import json
import math
import os
import re

from kiln_e2e import read_safetensors

CACHE_ID, SAVE_ID = "990", "991"


def cached_prompt(api, cache, prefix, **cache_inputs):
    """api with cache ("EasyCache", "LazyCache" or None) feeding every
    KSampler / BasicGuider its model, and the sampler's latent saved by
    SaveLatent under prefix instead of the decoded image."""
    p = json.loads(json.dumps(api))
    (sampler,) = [k for k, n in p.items() if n["class_type"] in ("KSampler", "SamplerCustomAdvanced")]
    for k in [k for k, n in p.items() if n["class_type"] in ("VAEDecode", "SaveImage", "PreviewImage")]:
        del p[k]
    if cache:
        takers = [n for n in p.values() if n["class_type"] in ("KSampler", "BasicGuider")]
        inputs = {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False}
        inputs.update(cache_inputs)
        inputs["model"] = takers[0]["inputs"]["model"]
        p[CACHE_ID] = {"inputs": inputs, "class_type": cache, "_meta": {"title": cache}}
        for n in takers:
            n["inputs"]["model"] = [CACHE_ID, 0]
    p[SAVE_ID] = {"inputs": {"filename_prefix": prefix, "samples": [sampler, 0]}, "class_type": "SaveLatent",
                  "_meta": {"title": "SaveLatent"}}
    return p


def latent(out_dir, prefix):
    """The samples of the one latent saved under prefix, as a list of floats."""
    (path,) = glob.glob(os.path.join(out_dir, prefix + "_*.latent"))
    tensors, _ = read_safetensors(path)
    return tensors["latent_tensor"].values


def skips(stderr):
    """(skipped, steps) of each "<Cache> - skipped N/M steps" line, in order."""
    return [(int(a), int(b)) for a, b in re.findall(r"Cache - skipped (\d+)/(\d+) steps", stderr)]


def rel_l2(a, b):
    """||a - b|| / ||b||."""
    num = sum((x - y) * (x - y) for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return math.sqrt(num / den)
