#!/usr/bin/env python3
"""`kiln convert` on every shared workflow, and `kiln run` refusing the ones Kiln cannot run.

    test_convert.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Conversion (with its default schema validation) must work for every UI file
in tests/fixtures/workflows, Flux and Z-Image included, and give its API
twin. `kiln run` validates for running: a prompt with classes Kiln does not
implement is refused before anything runs, naming each such node.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
FIXTURES = os.path.join(SRC, "tests", "fixtures", "workflows")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def kiln(*args):
    p = subprocess.run([KILN] + list(args), cwd=WORK, capture_output=True, text=True, timeout=300)
    crashed = p.returncode not in (0, 1) or "Sanitizer" in p.stderr or "runtime error:" in p.stderr
    check(not crashed, "no crash: kiln %s" % " ".join(os.path.basename(a) for a in args))
    if crashed:
        print(p.stderr[-4000:])
    return p


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
ui_files = sorted(glob.glob(os.path.join(FIXTURES, "*.ui.json")))
check(len(ui_files) >= 9, "fixture workflows found (%d)" % len(ui_files))
for ui in ui_files:
    name = os.path.basename(ui)[:-len(".ui.json")]
    want = json.load(open(os.path.join(FIXTURES, name + ".api.json")))
    p = kiln("convert", "--compact", ui)
    got = json.loads(p.stdout) if p.returncode == 0 else None
    check(p.returncode == 0 and got == want, "kiln convert %s gives its API twin" % name)

# kiln run: refused at validation, every node of a class Kiln does not run named
out = kiln("run", "--models", MODELS, "--output", os.path.join(WORK, "output"), "--json",
           os.path.join(FIXTURES, "qwen_image_edit.api.json"))
body = json.loads(out.stdout.splitlines()[-1]) if out.stdout.strip() else {}
prompt = json.load(open(os.path.join(FIXTURES, "qwen_image_edit.api.json")))
node_errors = body.get("node_errors", {})
unrunnable = {i for i, n in prompt.items()
              if any(e["type"] == "missing_node_type" for e in node_errors.get(i, {}).get("errors", []))}
check(out.returncode == 1 and body.get("error", {}).get("type") == "prompt_outputs_failed_validation",
      "kiln run qwen_image_edit: refused at validation")
check(not os.path.exists(os.path.join(WORK, "output")), "nothing ran")
for i in sorted(unrunnable):
    e = next(e for e in node_errors[i]["errors"] if e["type"] == "missing_node_type")
    check(e["extra_info"]["node_id"] == i and e["extra_info"]["class_type"] == prompt[i]["class_type"]
          and "is not implemented by Kiln" in e["message"] and e["details"].startswith("Kiln runs: "),
          "node %s (%s) named as not implemented" % (i, prompt[i]["class_type"]))
check({"TextEncodeQwenImageEdit", "CFGNorm"} <= {prompt[i]["class_type"] for i in unrunnable},
      "the Edit-only classes are among them: %s" % sorted({prompt[i]["class_type"] for i in unrunnable}))
print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
