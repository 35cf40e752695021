#!/usr/bin/env python3
"""End-to-end test of `kiln run` on the bundled tiny Qwen-Image workflow.

    test_run.py KILN SOURCE_DIR WORK_DIR

Checks: the API and UI workflows render PNGs named as ComfyUI names them; the
PNG's "prompt" chunk round-trips to the prompt that ran (and the UI file's
"workflow" chunk to the graph); a second prompt in the same call that only
changes the seed executes only the sampler and what follows, an identical
third one executes nothing and writes nothing; bad inputs give ComfyUI-shaped
errors naming the node and input, with exit status 1 and no crash.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

KILN, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
API = os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")
UI = os.path.join(SRC, "workflows", "qwen_image_t2i.ui.json")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(*args, json_mode=True):
    cmd = [KILN, "run", "--output", os.path.join(WORK, "output")] + (["--json"] if json_mode else []) + list(args)
    p = subprocess.run(cmd, cwd=WORK, capture_output=True, text=True, timeout=600)
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"type": "text", "data": line})
    crashed = p.returncode not in (0, 1) or "Sanitizer" in p.stderr or "runtime error:" in p.stderr
    check(not crashed, "no crash or sanitizer report: kiln run %s" % " ".join(args))
    if crashed:
        print(p.stderr[-4000:])
    return p.returncode, events, p.stderr


def png_texts(path):
    data, texts, i = open(path, "rb").read(), {}, 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"tEXt":
            k, v = data[i + 8:i + 8 + n].split(b"\0", 1)
            texts[k.decode("latin-1")] = v.decode("latin-1")
        i += 12 + n
    return texts


def of_type(events, kind):
    return [e["data"] for e in events if e.get("type") == kind]


def write(name, doc):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
api = json.load(open(API))

# 1. render, 2. same prompt with another seed, 3. identical again: one call, shared models and cache
seed2 = dict(api, **{"3": dict(api["3"], inputs=dict(api["3"]["inputs"], seed=42))})
b = write("seed42.json", seed2)
rc, ev, err = run(API, b, b)
check(rc == 0, "bundled workflow runs (exit 0)")
done = of_type(ev, "execution_success")
check(len(done) == 3, "three prompts succeed")
if len(done) == 3:
    check(done[0]["executed"] == ["39", "58", "38", "7", "6", "37", "66", "3", "8", "60"],
          "first run executes every node in ComfyUI's order: %s" % done[0]["executed"])
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

# UI format: converted, rendered, graph embedded as "workflow"
rc, ev, err = run("--seed", "5", UI)
out = of_type(ev, "executed")
check(rc == 0 and out, "UI workflow renders")
if out:
    texts = png_texts(out[0]["paths"][0])
    check(json.loads(texts.get("workflow", "null")) == json.load(open(UI)), "PNG 'workflow' chunk is the UI graph")
    check(json.loads(texts["prompt"])["3"]["inputs"]["seed"] == 5, "--seed sets the KSampler seed")

# human mode: paths on stdout, progress bar on stderr
rc, ev, err = run("--set", "60.filename_prefix=human/run", API, json_mode=False)
check(rc == 0 and ev and ev[0]["data"].endswith("human/run_00001_.png") and "4/4" in err, "human output mode")


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

unknown = dict(api, **{"99": {"class_type": "NoSuchNode", "inputs": {"images": ["8", 0]}}})
rc, ev, err = run(write("unknown.json", unknown))
body = ev[-1] if ev else {}
check(rc == 1 and body.get("error", {}).get("type") == "missing_node_type" and
      body["error"].get("extra_info", {}).get("node_id") == "99", "unknown class -> missing_node_type naming node 99")

# the type only picks between models sharing the same files (ComfyUI's detect_te_model):
# sd3 still loads Qwen-Image's encoder; hunyuan_image selects a model Kiln does not run
rc, ev, err = run("--set", "38.type=sd3", API)
check(rc == 0 and of_type(ev, "execution_success"), "CLIPLoader type sd3 on a Qwen2.5-VL file renders")
rc, ev, err = run("--set", "38.type=hunyuan_image", API)
fail = of_type(ev, "execution_error")
check(rc == 1 and fail and fail[0]["node_id"] == "38" and fail[0]["node_type"] == "CLIPLoader" and
      "'clip_name'" in fail[0]["exception_message"] and "HunyuanImage" in fail[0]["exception_message"] and
      fail[0]["exception_type"] and fail[0]["executed"] == ["39", "58"],
      "execution failure -> execution_error naming node 38, input clip_name and the detected model")

rc, ev, err = run("--set", "nosuchnode.seed=1", API)
check(rc == 1 and ev and ev[-1].get("error", {}).get("type") == "invalid_prompt", "--set on a missing node")
rc, ev, err = run(os.path.join(WORK, "does_not_exist.json"))
check(rc == 1 and ev and "error" in ev[-1], "missing workflow file -> invalid_prompt")

print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
