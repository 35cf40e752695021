#!/usr/bin/env python3
"""/free gives memory back and loaded models live under the memory budget (issue 16, fault 4), measured.

The models root is the tiny set with a diffusion model padded by a 256 MiB tensor it never reads
(so that model is larger than a 128 MiB budget). What the model files hold in the server's memory
is measured per file from /proc/PID/smaps (the resident pages of their mappings):
- loading reads every byte (the NaN/inf check) but drops each tensor's pages as it goes, so after
  a render the pad is not resident, while the weights the forwards read are;
- after POST /free {"unload_models": true, "free_memory": true} the model files' resident pages
  are gone (<= 10% left) and VmRSS went down, and the server renders the next prompt (the models
  load again);
- under `--memory-budget 128M`, smaller than that diffusion model: the render still completes, the
  text encoder is released for the diffusion model and the diffusion model for the VAE, each said
  in one stderr line ("released <file> (<size>) for <file>"), and after the render neither the
  text encoder's nor the diffusion model's pages are resident (<= 10% of the default budget's);
- a released model runs again unchanged: under `--memory-budget 10M` a LoRA'd diffusion model is
  released for the VAE (its LoRA adapters put back) and the next prompt's render, which patches it
  again, is byte for byte the render of a fresh process.

usage: test_runtime_free.py KILN SOURCE_DIR WORK_DIR MODELS"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from kiln_e2e import Checks  # noqa: E402
from kiln_client import Server  # noqa: E402

PAD = 256 << 20
DIT = "qwen_image_fp8_e4m3fn.safetensors"
TE = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE = "qwen_image_vae.safetensors"
check = Checks()


def padded_copy(src, dst):
    """src with an extra F32 tensor of PAD zero bytes at the end of its data (written in ~1 s)."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header["pad.weight"] = {"dtype": "F32", "shape": [PAD // 4], "data_offsets": [len(data), len(data) + PAD]}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
        block = bytes(1 << 20)
        for _ in range(PAD >> 20):
            f.write(block)


def models_root():
    root = os.path.join(WORK, "models")
    for d in os.listdir(MODELS):
        os.makedirs(os.path.join(root, d))
        for f in os.listdir(os.path.join(MODELS, d)):
            if not (d == "diffusion_models" and f == DIT):
                os.symlink(os.path.join(MODELS, d, f), os.path.join(root, d, f))
    padded_copy(os.path.join(MODELS, "diffusion_models", DIT), os.path.join(root, "diffusion_models", DIT))
    return root


def vm_rss(srv):
    with open("/proc/%d/status" % srv.proc.pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def file_rss(srv, names):
    """Resident bytes of the server's mappings of the model files `names` (smaps, by real path)."""
    paths = {os.path.realpath(os.path.join(root, d, n)) for d, n in names}
    total, current = 0, False
    with open("/proc/%d/smaps" % srv.proc.pid) as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = len(head) >= 6 and head[5] in paths
            elif current and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


ALL = [("diffusion_models", DIT), ("text_encoders", TE), ("vae", VAE)]


def render(srv, seed):
    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        p = json.load(f)
    p["58"]["inputs"].update(width=64, height=64)
    p["3"]["inputs"].update(seed=seed, steps=1)
    st, body = srv.post_json("/prompt", {"prompt": p})
    if st != 200:
        return "refused: %s %s" % (st, body)
    pid, deadline = body["prompt_id"], time.time() + 300
    while time.time() < deadline:
        st, h = srv.get_json("/history/" + pid)
        if st == 200 and pid in h and h[pid]["status"].get("completed") is not None:
            return h[pid]["status"]["status_str"]
        time.sleep(0.2)
    return "timed out"


def mib(b):
    return "%.0f MiB" % (b / 1048576)


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
root = models_root()

srv = Server(KILN, os.path.join(WORK, "default"), root)
try:
    check(render(srv, 1) == "success", "a render with the padded diffusion model")
    loaded, loaded_files = vm_rss(srv), file_rss(srv, ALL)
    default_te_dit = file_rss(srv, ALL[:2])
    check(loaded_files >= 1 << 20 and file_rss(srv, ALL[:1]) < PAD // 8,
          "after a render the weights read are resident (%s of the model files) and the unread %s pad is not "
          "(the diffusion model's file: %s)" % (mib(loaded_files), mib(PAD), mib(file_rss(srv, ALL[:1]))))
    st, _ = srv.post_json("/free", {"unload_models": True, "free_memory": True})
    left, deadline = loaded_files, time.time() + 20
    while time.time() < deadline and left > 0.1 * loaded_files:  # the worker frees between prompts
        time.sleep(0.2)
        left = file_rss(srv, ALL)
    freed = vm_rss(srv)
    check(st == 200 and left <= 0.1 * loaded_files and freed < loaded,
          "/free: the model files' resident pages %s -> %s, VmRSS %s -> %s" % (mib(loaded_files), mib(left),
                                                                              mib(loaded), mib(freed)))
    check(render(srv, 2) == "success", "the server renders after /free (the models load again)")
finally:
    srv.stop()

srv = Server(KILN, os.path.join(WORK, "budget"), root, ["--memory-budget", "128M"])
try:
    check(render(srv, 1) == "success", "--memory-budget 128M: a diffusion model above the whole budget still renders")
    tight = file_rss(srv, ALL[:2])
finally:
    rc, log = srv.stop()
released = re.findall(r"^released (\S+) \(([\d.]+ [MG]iB)\) for (\S+)$", log, re.M)
check(("text_encoders/" + TE, "12.5 MiB", "diffusion_models/" + DIT) in released,
      "the text encoder is released for the diffusion model, said on stderr: %s" % released)
check(any(r[0] == "diffusion_models/" + DIT and r[2] == "vae/" + VAE for r in released),
      "and the diffusion model for the VAE")
check(tight <= 0.1 * default_te_dit, "after the render the text encoder's and diffusion model's resident pages: %s "
      "(%s under the default budget)" % (mib(tight), mib(default_te_dit)))


def lora_prompt(seed):
    with open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")) as f:
        p = json.load(f)
    p["58"]["inputs"].update(width=64, height=64)
    p["3"]["inputs"].update(seed=seed, steps=2)
    p["90"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["37", 0], "lora_name": "Qwen-Image-Lightning-8steps-V1.0.safetensors", "strength_model": 0.8}}
    p["66"]["inputs"]["model"] = ["90", 0]
    p["60"]["inputs"]["filename_prefix"] = "seed%d" % seed
    path = os.path.join(WORK, "lora%d.api.json" % seed)
    with open(path, "w") as f:
        json.dump(p, f)
    return path


def kiln_run(out, prompts, *args):
    return subprocess.run([KILN, "run", "--models", MODELS, "--output", os.path.join(WORK, out)] + list(args) + prompts,
                          capture_output=True, text=True, timeout=600)


tight_run = kiln_run("tight", [lora_prompt(1), lora_prompt(2)], "--memory-budget", "10M")
fresh = kiln_run("fresh", [lora_prompt(2)])
pngs = [os.path.join(WORK, d, "seed2_00001_.png") for d in ("tight", "fresh")]
check(tight_run.returncode == 0 and tight_run.stderr.count("released diffusion_models/%s" % DIT) == 2,
      "--memory-budget 10M: the LoRA'd diffusion model is released for the VAE after each prompt")
same = fresh.returncode == 0 and all(os.path.exists(p) for p in pngs)
if same:
    with open(pngs[0], "rb") as a, open(pngs[1], "rb") as b:
        same = a.read() == b.read()
check(same, "and its second render (LoRA applied again) is the fresh process's, byte for byte")

check.exit()
