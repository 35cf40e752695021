#!/usr/bin/env python3
"""A prompt that would need more memory than the budget is refused before it allocates (issue 16, fault 4).

Nothing estimated what a prompt would allocate: a 16384x16384 latent at batch 64 got the process
killed (and the server's queue with it). The empty-latent nodes now estimate the render's peak from
their inputs (nodes/latent.c) and refuse above the budget (default 75% of RAM; --memory-budget for
kiln run and kiln serve) as a node error naming the input, without allocating anything. The nodes
that take sizes from linked inputs estimate theirs at the start of their run, before allocating:
VAEDecode/VAEEncode (the VAE's full-resolution feature maps), the samplers (one forward's
activations from the token count and the model's widths) and the scaling nodes (ImageScale also at
validation); each refusal names node and input, and the server renders the next good prompt.

usage: test_runtime_memory.py KILN SOURCE_DIR WORK_DIR MODELS"""
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from kiln_e2e import Checks, write_safetensors  # noqa: E402
from kiln_client import Server  # noqa: E402

check = Checks()


def prompt(width, height, batch):
    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        p = json.load(f)
    p["58"]["inputs"].update(width=width, height=height, batch_size=batch)
    p["3"]["inputs"]["steps"] = 1
    return p


def run(p, name, *args):
    path = os.path.join(WORK, name + ".api.json")
    with open(path, "w") as f:
        json.dump(p, f)
    r = subprocess.run([KILN, "run", "--models", MODELS, "--output", os.path.join(WORK, "out")] + list(args) + [path],
                       capture_output=True, text=True, timeout=600)
    body = json.loads(r.stdout.splitlines()[0]) if r.stdout.startswith("{") else {}
    return r, body


def refused_on(body, node, input_name):
    errs = body.get("node_errors", {}).get(node, {}).get("errors", [])
    return bool(errs) and errs[0]["details"].startswith(input_name + " - ") and "--memory-budget" in errs[0]["details"]


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)

t0 = time.time()
r, body = run(prompt(16384, 16384, 64), "huge")
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
check(r.returncode == 1 and refused_on(body, "58", "width"),
      "16384x16384 at batch 64 is refused on node 58 'width': %s" % r.stderr.strip()[-250:])
check(time.time() - t0 < 10 and peak_mb < 1024, "without allocating it (%.1f s, peak %.0f MB)" % (time.time() - t0, peak_mb))

r, body = run(prompt(1536, 1536, 1), "big", "--memory-budget", "1G")
check(r.returncode == 1 and refused_on(body, "58", "width"), "1536x1536 over a 1 GiB budget: refused on 'width'")
r, body = run(prompt(512, 512, 8), "batch", "--memory-budget", "1G")
check(r.returncode == 1 and refused_on(body, "58", "batch_size"), "512x512 x8 over 1 GiB: refused on 'batch_size'")
r, body = run(prompt(256, 256, 1), "fits", "--memory-budget", "1G")
check(r.returncode == 0, "256x256 fits in 1 GiB and renders (rc %d)" % r.returncode)
r, _ = run(prompt(256, 256, 1), "bad", "--memory-budget", "lots")
check(r.returncode == 2 and "--memory-budget" in r.stderr, "a bad --memory-budget is a usage error")

# kiln serve takes the flag too: POST /prompt answers 400 with the node error
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
srv = subprocess.Popen([KILN, "serve", "--port", str(port), "--models", MODELS, "--memory-budget", "1G",
                        "--output-directory", os.path.join(WORK, "out"), "--input-directory", os.path.join(WORK, "in"),
                        "--temp-directory", os.path.join(WORK, "temp"), "--user-directory", os.path.join(WORK, "user")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    base = "http://127.0.0.1:%d" % port
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/system_stats", timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    req = urllib.request.Request(base + "/prompt", data=json.dumps({"prompt": prompt(1536, 1536, 1)}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        status, body = urllib.request.urlopen(req, timeout=30).status, {}
    except urllib.error.HTTPError as e:
        status, body = e.code, json.loads(e.read())
    check(status == 400 and refused_on(body, "58", "width"), "kiln serve --memory-budget 1G: /prompt answers 400 on 'width'")
finally:
    srv.terminate()
    srv.wait(timeout=60)



def api(nodes):
    return {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}


def latent_file(path, h, w):
    write_safetensors(path, {"latent_format_version_0": ([0], []),
                             "latent_tensor": ([1, 16, 1, h, w], [0.0] * (16 * h * w))})


def execution_error(srv, p):
    """Queues p and waits for its end; (status_str, the execution_error's data or {})."""
    st, body = srv.post_json("/prompt", {"prompt": p})
    if st != 200:
        return "refused %d" % st, body
    pid, deadline = body["prompt_id"], time.time() + 300
    while time.time() < deadline:
        st, h = srv.get_json("/history/" + pid)
        if st == 200 and pid in h and h[pid]["status"].get("completed") is not None:
            msgs = [m[1] for m in h[pid]["status"]["messages"] if m[0] == "execution_error"]
            return h[pid]["status"]["status_str"], msgs[0] if msgs else {}
        time.sleep(0.2)
    return "timed out", {}


def over_budget(err, node, node_type, input_name):
    msg = err.get("exception_message", "")
    return (err.get("node_id") == node and err.get("node_type") == node_type and
            msg.startswith("input '%s': " % input_name) and "above the memory budget" in msg)


# 16 MiB: the tiny set renders 64x64 under it (each model released for the next, nodes/model_store.h)
srv = Server(KILN, os.path.join(WORK, "srv16"), MODELS, ["--memory-budget", "16M"])
try:
    latent_file(os.path.join(srv.dirs["input"], "big.latent"), 128, 128)  # 4096 tokens: ~67 MB to sample
    latent_file(os.path.join(srv.dirs["input"], "mid.latent"), 64, 64)  # a 512x512 decode: ~73 MB
    t2i = prompt(64, 64, 1)
    sample = json.loads(json.dumps(t2i))
    sample["70"] = {"class_type": "LoadLatent", "inputs": {"latent": "big.latent"}}
    sample["3"]["inputs"]["latent_image"] = ["70", 0]
    status, err = execution_error(srv, sample)
    check(status == "error" and over_budget(err, "3", "KSampler", "latent_image"),
          "KSampler on a linked 1024x1024 latent over 16 MiB: refused on 'latent_image': %s"
          % err.get("exception_message"))
    decode = api({"1": ("LoadLatent", {"latent": "mid.latent"}),
                  "2": ("VAELoader", {"vae_name": "qwen_image_vae.safetensors"}),
                  "3": ("VAEDecode", {"samples": ["1", 0], "vae": ["2", 0]}),
                  "4": ("SaveImage", {"images": ["3", 0], "filename_prefix": "big"})})
    status, err = execution_error(srv, decode)
    check(status == "error" and over_budget(err, "3", "VAEDecode", "samples"),
          "VAEDecode of a 512x512 image over 16 MiB: refused on 'samples': %s" % err.get("exception_message"))
    scale = json.loads(json.dumps(t2i))
    scale["71"] = {"class_type": "ImageScale", "inputs": {"image": ["8", 0], "upscale_method": "bilinear",
                                                           "width": 4096, "height": 2048, "crop": "disabled"}}
    scale["60"]["inputs"]["images"] = ["71", 0]
    st, body = srv.post_json("/prompt", {"prompt": scale})
    errs = body.get("node_errors", {}).get("71", {}).get("errors", []) if st == 400 else []
    check(errs and errs[0]["details"].startswith("width - ") and "above the memory budget" in errs[0]["details"],
          "ImageScale to 4096x2048 over 16 MiB: /prompt answers 400 on 'width': %s" % errs[:1])
    scale["71"] = {"class_type": "ImageScaleToTotalPixels",
                   "inputs": {"image": ["8", 0], "upscale_method": "bilinear", "megapixels": 16.0}}
    status, err = execution_error(srv, scale)
    check(status == "error" and over_budget(err, "71", "ImageScaleToTotalPixels", "megapixels"),
          "ImageScaleToTotalPixels to 16 MP over 16 MiB: refused at its run on 'megapixels': %s"
          % err.get("exception_message"))
    status, _ = execution_error(srv, t2i)
    check(status == "success", "the server renders the next good prompt under the same budget")
    st, h = srv.get_json("/history")
    check(st == 200 and sum(v["status"]["status_str"] == "success" for v in h.values()) == 1,
          "/history has it beside the refused ones")
finally:
    srv.stop()

check.exit()
