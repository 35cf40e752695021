#!/usr/bin/env python3
"""A prompt that would need more memory than the budget is refused before it allocates (issue 16, fault 4).

Nothing estimated what a prompt would allocate: a 16384x16384 latent at batch 64 got the process
killed (and the server's queue with it). The empty-latent nodes now estimate the render's peak from
their inputs (nodes/latent.c) and refuse above the budget (default 75% of RAM; --memory-budget for
kiln run and kiln serve) as a node error naming the input, without allocating anything.

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

KILN, SRC, WORK, MODELS = sys.argv[1:5]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from kiln_e2e import Checks  # noqa: E402

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

check.exit()
