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
import sys

from kiln_e2e import Checks, check_bundled

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

check_bundled(check, KILN, SRC, WORK, VARIANTS)
check.exit()
