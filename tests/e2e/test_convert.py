#!/usr/bin/env python3
"""`kiln convert` on every shared workflow, and `kiln run` refusing the ones Kiln cannot run.

    test_convert.py KILN SOURCE_DIR WORK_DIR

Conversion (with its default schema validation) must work for every UI file
in tests/fixtures/workflows, Flux and Z-Image included, and give its API
twin. `kiln run` validates for running: Kiln implements every class the
shared workflows use, so without their model files each is refused for the
files alone, before anything runs.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

KILN, SRC, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
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

# kiln run: every class of every shared workflow runs. With an empty models folder each is refused
# at validation for its files only (value_not_in_list on the loaders, LoadImage's missing input), never for a class
# (missing_node_type: tests/unit/test_hooks.c covers that refusal), and nothing runs.
empty = os.path.join(WORK, "no_models")
os.makedirs(empty)
for api in sorted(glob.glob(os.path.join(FIXTURES, "*.api.json"))):
    name = os.path.basename(api)[:-len(".api.json")]
    out = kiln("run", "--models", empty, "--output", os.path.join(WORK, "output"), "--json", api)
    body = json.loads(out.stdout.splitlines()[-1]) if out.stdout.strip() else {}
    kinds = {e["type"] for n in body.get("node_errors", {}).values() for e in n.get("errors", [])}
    check(out.returncode == 1 and body.get("error", {}).get("type") == "prompt_outputs_failed_validation"
          and "missing_node_type" not in kinds and "value_not_in_list" in kinds,
          "kiln run %s without its models: refused for the files only (%s)" % (name, sorted(kinds)))
check(not os.path.exists(os.path.join(WORK, "output")), "nothing ran")
print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
