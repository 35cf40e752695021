#!/usr/bin/env python3
"""SaveImage never writes through a symlink below the output folder (issue 16, fault 8).

The saving nodes' prefix check was textual: "link/x" with output/link -> elsewhere wrote there,
while /view and /upload refused the same path. They now share one resolver (kernels/confine.h):
a symlinked subfolder, wherever it points, is refused on filename_prefix; nothing appears outside
the output folder; a real subfolder still works; a symlink planted under a future file name is
not written through.

usage: test_runtime_files.py KILN SOURCE_DIR WORK_DIR MODELS"""
import json
import os
import shutil
import subprocess
import sys

KILN, SRC, WORK, MODELS = sys.argv[1:5]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from kiln_e2e import Checks  # noqa: E402

check = Checks()


def run(prefix, name):
    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        prompt = json.load(f)
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    prompt[save]["inputs"]["filename_prefix"] = prefix
    path = os.path.join(WORK, name + ".api.json")
    with open(path, "w") as f:
        json.dump(prompt, f)
    return subprocess.run([KILN, "run", "--models", MODELS, "--output", OUT, path], capture_output=True, text=True,
                          timeout=600)


shutil.rmtree(WORK, ignore_errors=True)
OUT, OUTSIDE = os.path.join(WORK, "output"), os.path.join(WORK, "outside")
os.makedirs(OUT)
os.makedirs(OUTSIDE)
os.symlink(OUTSIDE, os.path.join(OUT, "link"))
os.makedirs(os.path.join(OUT, "real"))
os.symlink(os.path.join(OUT, "real"), os.path.join(OUT, "inner_link"))  # points inside: refused too, as /view does

for prefix in ("link/x", "link/deeper/x", "inner_link/x"):
    p = run(prefix, "p")
    check(p.returncode == 1 and "filename_prefix" in p.stdout + p.stderr and "outside the output folder" in p.stdout,
          "prefix %s: refused on filename_prefix (rc %d): %s" % (prefix, p.returncode, p.stdout.strip()[-200:]))
check(os.listdir(OUTSIDE) == [], "nothing was written outside the output folder: %s" % os.listdir(OUTSIDE))
check(os.listdir(os.path.join(OUT, "real")) == [], "nor through the inner link")

# a real subfolder renders; a symlink planted under the next name is not written through
planted = os.path.join(OUTSIDE, "victim.png")
os.symlink(planted, os.path.join(OUT, "real", "y_00001_.png"))
p = run("real/y", "ok")
check(p.returncode == 0, "prefix real/y renders (rc %d): %s" % (p.returncode, p.stderr.strip()[-200:]))
check(os.path.exists(os.path.join(OUT, "real", "y_00002_.png")), "as real/y_00002_.png, past the planted name")
check(not os.path.exists(planted), "the planted symlink's target was not created")

check.exit()
