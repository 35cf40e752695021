#!/usr/bin/env python3
"""End-to-end test of `kiln run` on Z-Image Turbo with the tiny Z-Image set the build
writes (no --models: build/models holds z_image_turbo_bf16, qwen_3_4b and ae under
ComfyUI's names).

    test_zimage_run.py KILN SOURCE_DIR WORK_DIR

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
"""
import json
import os
import sys

from kiln_e2e import Checks, changed_fraction, check_bundled, edited, image_data, png_texts, render, render_pixels

KILN, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
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

check.exit()
