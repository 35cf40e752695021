#!/usr/bin/env python3
"""End-to-end test of `kiln run` on the bundled tiny Qwen-Image workflow.

    test_run.py KILN SOURCE_DIR WORK_DIR

Checks: the API and UI workflows render PNGs named as ComfyUI names them; the
PNG's "prompt" chunk round-trips to the prompt that ran (and the UI file's
"workflow" chunk to the graph); the pixels are a plausible render (no flat
channel, not stuck at black/white as NaN or inf leave them); the same prompt in
another process gives the same file byte for byte, another seed other pixels;
a second prompt in the same call that only changes the seed executes only the
sampler and what follows, an identical third one executes nothing and writes
nothing; SaveLatent writes ComfyUI's .latent file, which LoadLatent reads back
(decoding it gives the same pixels; an old file without the format marker is
scaled by 1 / 0.18215); bad inputs give ComfyUI-shaped errors naming the node
and input, with exit status 1 and no crash.
"""
import json
import os
import shutil
import struct
import sys

from kiln_e2e import Checks, changed_fraction, of_type, png_texts, read_safetensors, render_pixels, run_kiln, \
    write_safetensors

KILN, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
API = os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")
UI = os.path.join(SRC, "workflows", "qwen_image_t2i.ui.json")
check = Checks()


def run(*args, json_mode=True, output="output"):
    return run_kiln(check, KILN, ["--output", os.path.join(WORK, output)] + list(args), WORK, json_mode=json_mode)


def write(name, doc):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def pixels(path, what):
    return render_pixels(check, path, what)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
api = json.load(open(API))

EVERY_NODE = ["39", "58", "38", "7", "6", "37", "66", "3", "8", "60"]
first = None  # the first render's pixels

# 1. render, 2. same prompt with another seed, 3. identical again: one call, shared models and cache
seed2 = dict(api, **{"3": dict(api["3"], inputs=dict(api["3"]["inputs"], seed=42))})
b = write("seed42.json", seed2)
rc, ev, err = run(API, b, b)
check(rc == 0, "bundled workflow runs (exit 0)")
done = of_type(ev, "execution_success")
check(len(done) == 3, "three prompts succeed")
if len(done) == 3:
    check(done[0]["executed"] == EVERY_NODE, "first run executes every node in ComfyUI's order: %s" %
          done[0]["executed"])
    check(done[1]["executed"] == ["3", "8", "60"], "new seed re-runs only 3, 8, 60: %s" % done[1]["executed"])
    check(sorted(done[1]["cached"]) == sorted(["39", "38", "37", "58", "6", "7", "66"]), "the rest is cached")
    check(done[2]["executed"] == [], "identical prompt executes nothing")
    f1 = done[0]["outputs"]["60"]["images"][0]["filename"]
    f2 = done[1]["outputs"]["60"]["images"][0]["filename"]
    f3 = done[2]["outputs"]["60"]["images"][0]["filename"]
    check((f1, f2, f3) == ("ComfyUI_00001_.png", "ComfyUI_00002_.png", "ComfyUI_00002_.png"),
          "file names follow ComfyUI's counter: %s %s %s" % (f1, f2, f3))
    png = os.path.join(WORK, "output", f1)
    check(open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", "output is a PNG")
    texts = png_texts(png)
    check(json.loads(texts.get("prompt", "null")) == api, "PNG 'prompt' chunk round-trips to the prompt")
    check(texts.get("prompt", "").isascii(), "'prompt' chunk is ASCII (json.dumps ensure_ascii)")
    check(len(of_type(ev, "progress")) == 8, "4 progress events per sampler run")
    check(os.path.exists(os.path.join(WORK, "output", f2)) and
          not os.path.exists(os.path.join(WORK, "output", "ComfyUI_00003_.png")), "no file for the cached run")
    first = pixels(png, "workflow's seed")
    seed42 = pixels(os.path.join(WORK, "output", f2), "seed 42")
    # random tiny weights: another noise changes nearly every value, not a few
    changed = changed_fraction(first, seed42)
    check(changed > 0.5, "seed 42 changes %.0f%% of the pixel values" % (100 * changed))

    # the same prompt in a new process: the same file; then SaveLatent added: only it runs
    saving = dict(api, **{"90": {"class_type": "SaveLatent",
                                 "inputs": {"samples": ["3", 0], "filename_prefix": "latents/t2i"}}})
    rc, ev, err = run(API, write("save_latent.json", saving), output="again")
    done = of_type(ev, "execution_success")
    if check(rc == 0 and len(done) == 2, "re-render and SaveLatent run (exit %d)" % rc):
        check(done[0]["executed"] == EVERY_NODE, "the new process runs every node again")
        with open(png, "rb") as before, open(os.path.join(WORK, "again", f1), "rb") as again:
            check(before.read() == again.read(), "same prompt, same seed, another process: the same PNG byte for byte")
        check(done[1]["executed"] == ["90"], "adding SaveLatent executes only it: %s" % done[1]["executed"])
        saved = done[1]["outputs"].get("90", {}).get("latents", [])
        check(saved == [{"filename": "t2i_00001_.latent", "subfolder": "latents", "type": "output"}],
              "SaveLatent's UI output as ComfyUI's: %s" % saved)

# UI format: converted, rendered, graph embedded as "workflow"
rc, ev, err = run("--seed", "5", UI)
out = of_type(ev, "executed")
check(rc == 0 and out, "UI workflow renders")
if out:
    texts = png_texts(out[0]["paths"][0])
    expected = json.load(open(UI))
    for node in expected["nodes"]:  # --seed 5 is what ran, so the graph says so
        if node["type"] == "KSampler":
            node["widgets_values"][0] = 5
    check(json.loads(texts.get("workflow", "null")) == expected,
          "PNG 'workflow' chunk is the UI graph with the rendered seed")
    check(json.loads(texts["prompt"])["3"]["inputs"]["seed"] == 5, "--seed sets the KSampler seed")

# LoadLatent: the saved file decodes to the same pixels and re-saves unchanged; an old
# file without the format marker is scaled by 1 / 0.18215 in float32
latent_file = os.path.join(WORK, "again", "latents", "t2i_00001_.latent")
os.makedirs(os.path.join(WORK, "input"))
if os.path.exists(latent_file):
    shutil.copy(latent_file, os.path.join(WORK, "input", "t2i.latent"))
old_values = [0.5, -1.25, 3.0, 0.1]
write_safetensors(os.path.join(WORK, "input", "old.latent"), {"latent_tensor": ([1, 4, 1, 1], old_values)})
loading = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "t2i.latent"}},
           "2": dict(api["39"]),
           "3": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 0]}},
           "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "loaded"}},
           "5": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "copy"}},
           "6": {"class_type": "LoadLatent", "inputs": {"latent": "old.latent"}},
           "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "old"}}}
rc, ev, err = run(write("load_latent.json", loading), output="loaded")
if check(rc == 0, "LoadLatent workflow runs (exit %d) %s" % (rc, err.strip()[-300:])) and first is not None:
    check(pixels(os.path.join(WORK, "loaded", "loaded_00001_.png"), "decoded .latent") == first,
          "decoding the saved latent gives the render's pixels")
    original, _ = read_safetensors(latent_file)
    copy, _ = read_safetensors(os.path.join(WORK, "loaded", "copy_00001_.latent"))
    check(copy["latent_tensor"].values == original["latent_tensor"].values and
          copy["latent_tensor"].shape == original["latent_tensor"].shape, "load + save keeps the latent exactly")
    old, _ = read_safetensors(os.path.join(WORK, "loaded", "old_00001_.latent"))
    want = [f32(f32(v) * f32(1.0 / 0.18215)) for v in old_values]
    check(old["latent_tensor"].values == want, "old .latent scaled by 1 / 0.18215: %s" % old["latent_tensor"].values)

# human mode: paths on stdout, progress bar on stderr; --timings adds a table there
rc, ev, err = run("--timings", "--set", "60.filename_prefix=human/run", API, json_mode=False)
check(rc == 0 and ev and ev[0]["data"].endswith("human/run_00001_.png") and "4/4" in err, "human output mode")
rows = [line.split() for line in err.split("timings (wall seconds")[-1].splitlines()[1:]]
check("timings (wall seconds" in err and [r[0] for r in rows] == EVERY_NODE and
      any(r[1] == "KSampler" and "4 steps:" in " ".join(r) for r in rows), "--timings table on stderr: %s" % rows)

# --timings with --json: a "timings" event per prompt after its execution_success, naming
# the executed nodes in order with their seconds and the sampler's 4 step times; the
# identical second prompt executes nothing, so it lists nothing
rc, ev, err = run("--timings", "--output", os.path.join(WORK, "timed"), API, API)
timed = of_type(ev, "timings")
check(rc == 0 and len(timed) == 2 and ev[-1]["type"] == "timings", "one timings event per prompt, each after the run")
if len(timed) == 2:
    nodes = timed[0]["nodes"]
    check([n["node"] for n in nodes] == EVERY_NODE and nodes[7]["class_type"] == "KSampler",
          "timings name every executed node in order: %s" % [n["node"] for n in nodes])
    secs = [n["seconds"] for n in nodes]
    check(all(0 <= s < float("inf") for s in secs) and sum(secs) <= timed[0]["seconds"],
          "node seconds are finite, >= 0, and add up to at most the run's %.3f s: %s" % (timed[0]["seconds"], secs))
    steps = nodes[7]["steps"]
    check(len(steps) == 4 and all(s > 0 for s in steps) and sum(steps) <= nodes[7]["seconds"],
          "KSampler: 4 step times within its node time: %s" % steps)
    check(all(n["steps"] == [] for i, n in enumerate(nodes) if i != 7), "only the sampler has steps")
    # each node's peak RSS is positive and the run's is the largest of them
    peaks = [n["peak_rss_mib"] for n in nodes]
    check(all(p > 0 for p in peaks) and timed[0]["peak_rss_mib"] == max(peaks),
          "node peak RSS > 0, the run's %s their max: %s" % (timed[0]["peak_rss_mib"], peaks))
    check(timed[1]["nodes"] == [] and timed[1]["prompt_id"] != timed[0]["prompt_id"], "the cached prompt lists no nodes")


def expect_validation_error(args, node, err_type, input_name, what):
    rc, ev, err = run(*args)
    body = ev[-1] if ev else {}
    errors = body.get("node_errors", {}).get(node, {}).get("errors", [])
    ok = rc == 1 and any(e["type"] == err_type and e["extra_info"].get("input_name") == input_name for e in errors)
    check(ok, "%s -> %s on node %s input %s" % (what, err_type, node, input_name))


expect_validation_error(["--set", "37.unet_name=missing.safetensors", API], "37", "value_not_in_list", "unet_name",
                        "missing model file")
expect_validation_error(["--set", "37.unet_name=../vae/qwen_image_vae.safetensors", API], "37", "value_not_in_list",
                        "unet_name", "name escaping its folder")
expect_validation_error(["--set", "37.unet_name=/etc/passwd", API], "37", "value_not_in_list", "unet_name",
                        "absolute name")
expect_validation_error(["--set", "58.width=100000", "--set", "58.height=100000", API], "58", "value_bigger_than_max",
                        "width", "100000x100000 latent")
missing_latent = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "missing.latent"}},
                  "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
expect_validation_error([write("missing_latent.json", missing_latent)], "1", "custom_validation_failed", "latent",
                        "missing .latent file")

unknown = dict(api, **{"99": {"class_type": "NoSuchNode", "inputs": {"images": ["8", 0]}}})
rc, ev, err = run(write("unknown.json", unknown))
body = ev[-1] if ev else {}
check(rc == 1 and body.get("error", {}).get("type") == "missing_node_type" and
      body["error"].get("extra_info", {}).get("node_id") == "99", "unknown class -> missing_node_type naming node 99")

# the type only picks between models sharing the same files (ComfyUI's detect_te_model):
# sd3 still loads Qwen-Image's encoder; hunyuan_image selects a model Kiln does not run,
# which validation refuses (the files' headers are read, nothing is loaded)
rc, ev, err = run("--set", "38.type=sd3", API)
check(rc == 0 and of_type(ev, "execution_success"), "CLIPLoader type sd3 on a Qwen2.5-VL file renders")


def validation_message(args, node, input_name):
    rc, ev, err = run(*args)
    body = ev[-1] if ev else {}
    errors = body.get("node_errors", {}).get(node, {}).get("errors", [])
    hits = [e for e in errors if e["type"] == "custom_validation_failed" and e["extra_info"].get("input_name") == input_name]
    return rc, (hits[0]["details"] if hits else ""), not os.path.exists(os.path.join(WORK, "output", "none"))


rc, details, _ = validation_message(["--set", "38.type=hunyuan_image", API], "38", "clip_name")
check(rc == 1 and "HunyuanImage" in details, "CLIPLoader type hunyuan_image: refused at validation naming the model")

# A models folder with files of families Kiln recognises but does not run, and a VAE whose
# header looks right but whose weights do not load: validation refuses the first kind naming
# the family; the second fails when the node runs (execution_error naming node and input).
models = os.path.join(WORK, "models")
for sub in ("diffusion_models", "text_encoders", "vae"):
    shutil.copytree(os.path.join(os.path.dirname(KILN), "models", sub), os.path.join(models, sub))
write_safetensors(os.path.join(models, "diffusion_models", "z_image_turbo_bf16.safetensors"),
                  {"cap_embedder.1.weight": ([3840, 1], [0.0] * 3840)})
write_safetensors(os.path.join(models, "diffusion_models", "flux2_dev.safetensors"),
                  {"double_stream_modulation_img.lin.weight": ([2, 2], [0.0] * 4)})
write_safetensors(os.path.join(models, "vae", "broken_vae.safetensors"),
                  {"decoder.middle.0.residual.0.gamma": ([4, 1, 1, 1], [1.0] * 4)})
rc, details, _ = validation_message(["--models", models, "--set", "37.unet_name=flux2_dev.safetensors", API], "37",
                                    "unet_name")
check(rc == 1 and "detected a Flux.2 diffusion model" in details and "Kiln runs: " in details
      and "Qwen-Image" in details.split("Kiln runs: ")[1] and WORK not in details,
      "Flux.2 checkpoint: refused at validation naming the family (%s)" % details)
# a family Kiln runs, but not with this text encoder: refused where the two meet, naming both loaders
rc, details, _ = validation_message(["--models", models, "--set", "37.unet_name=z_image_turbo_bf16.safetensors", API],
                                    "3", "positive")
check(rc == 1 and "Z-Image diffusion model (node 37)" in details and "Qwen-Image (Qwen2.5-VL-7B) text encoder (node 38)"
      in details, "Z-Image checkpoint in a Qwen-Image workflow: refused at validation naming both families (%s)" % details)
rc, ev, err = run("--models", models, "--set", "39.vae_name=broken_vae.safetensors", API)
fail = of_type(ev, "execution_error")
check(rc == 1 and fail and fail[0]["node_id"] == "39" and fail[0]["node_type"] == "VAELoader" and
      "'vae_name'" in fail[0]["exception_message"] and fail[0]["exception_type"] and fail[0]["executed"] == [],
      "execution failure -> execution_error naming node 39 and input vae_name")

rc, ev, err = run("--set", "nosuchnode.seed=1", API)
check(rc == 1 and ev and ev[-1].get("error", {}).get("type") == "invalid_prompt", "--set on a missing node")
rc, ev, err = run(os.path.join(WORK, "does_not_exist.json"))
check(rc == 1 and ev and "error" in ev[-1], "missing workflow file -> invalid_prompt")

check.exit()
