#!/usr/bin/env python3
"""Prompt text as ComfyUI's json.loads reads it (issue 16, faults 6 and 9; kernels/json.h).

- Seeds from 2^63 to 2^64 - 1 (ComfyUI's /object_info advertises 18446744073709551615) were refused
  as "Invalid JSON: too big integer": they render, exactly: at::mt19937 seeds from the low 32 bits,
  so seed 2^64 - 1 gives seed 2^32 - 1's pixels, and the PNG's prompt chunk keeps the digits.
- A UTF-8 BOM is skipped (json.loads(bytes) does); "\\u0000" is refused with line, column and
  character position, as are other syntax errors.

usage: test_runtime_json.py KILN SOURCE_DIR WORK_DIR MODELS"""
import json
import os
import shutil
import struct
import subprocess
import sys

KILN, SRC, WORK, MODELS = sys.argv[1:5]
BIG = 18446744073709551615
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from kiln_e2e import Checks  # noqa: E402

check = Checks()


def run(args, name):
    out = os.path.join(WORK, name)
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([KILN, "run", "--models", MODELS, "--output", out] + args, capture_output=True, text=True,
                       timeout=600)
    return p, out


def png_chunks(path):
    data, chunks = open(path, "rb").read()[8:], {}
    while data:
        n, kind = struct.unpack(">I4s", data[:8])
        chunks.setdefault(kind, []).append(data[8:8 + n])
        data = data[12 + n:]
    return chunks


def rendered(out):
    files = sorted(os.listdir(out)) if os.path.isdir(out) else []
    return png_chunks(os.path.join(out, files[0])) if files else None


os.makedirs(WORK, exist_ok=True)
wf = os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")
text = open(wf).read()
prompt = json.loads(text)
seed_node = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")

# The seed written in the file: json.dumps prints the big int as digits.
prompt[seed_node]["inputs"]["seed"] = BIG
big_file = os.path.join(WORK, "big_seed.api.json")
open(big_file, "w").write(json.dumps(prompt))
p, out = run([big_file], "big")
check(p.returncode == 0, f"seed 2^64 - 1 in the file renders (rc {p.returncode}: {p.stderr.strip()[-300:]})")
big = rendered(out)
p, out = run(["--seed", "4294967295", wf], "low32")
low = rendered(out)
check(big is not None and low is not None and big[b"IDAT"] == low[b"IDAT"],
      "seed 2^64 - 1 draws seed 2^32 - 1's noise (torch's mt19937 takes the low 32 bits)")
check(big is not None and any(b'"seed": 18446744073709551615' in c for c in big.get(b"tEXt", [])),
      "the PNG's prompt chunk keeps the seed's digits")
p, out = run(["--seed", str(2**63), wf], "two63")
check(p.returncode == 0 and rendered(out) is not None, f"--seed 2^63 renders (rc {p.returncode})")

# 2^64: refused with its position (ComfyUI says value_bigger_than_max; Kiln holds no integer past 64 bits).
prompt[seed_node]["inputs"]["seed"] = BIG + 1
open(big_file, "w").write(json.dumps(prompt))
p, out = run([big_file], "too_big")
check(p.returncode == 1 and "too big integer" in p.stdout and "line" in p.stdout,
      f"2^64 is refused with its position: {p.stdout.strip()[:200]}")

# A BOM is skipped; NUL and broken text are refused with line/column/char.
bom_file = os.path.join(WORK, "bom.api.json")
open(bom_file, "wb").write(b"\xef\xbb\xbf" + text.encode())
p, out = run([bom_file], "bom")
check(p.returncode == 0 and rendered(out) is not None, f"a UTF-8 BOM is skipped (rc {p.returncode}: {p.stderr.strip()[-200:]})")
nul_file = os.path.join(WORK, "nul.api.json")
open(nul_file, "w").write('{"1": {"class_type": "SaveImage",\n  "inputs": {"filename_prefix": "a\\u0000b"}}}')
p, _ = run([nul_file], "nul")
err = json.loads(p.stdout.splitlines()[0]) if p.stdout else {}
details = err.get("error", {}).get("details", "")
check(p.returncode == 1 and "\\u0000" in details and "line 2 column 35 (char 68)" in details,
      f"NUL in a string: refused with its position: {details}")
bad_file = os.path.join(WORK, "bad.api.json")
open(bad_file, "w").write('{"1": {"class_type": "SaveImage",\n  "inputs": {,}}}')
p, _ = run([bad_file], "bad")
err = json.loads(p.stdout.splitlines()[0]) if p.stdout else {}
info = err.get("error", {}).get("extra_info", {})
check(p.returncode == 1 and info.get("line") == 2 and info.get("column") == 14 and info.get("position") == 47,  # Python: line 2 column 14 (char 47)
     
      f"a syntax error names line, column and position: {info}")

check.exit()
