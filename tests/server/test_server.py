#!/usr/bin/env python3
"""`kiln serve` driven as ComfyUI clients drive ComfyUI.

    test_server.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

1. The bundled workflow over POST /prompt + /ws: ComfyUI's message sequence,
   /history, and the /view bytes equal `kiln run`'s PNG for the same prompt;
   the same for the bundled Flux.1 dev workflow (workflows/flux_dev_t2i.api.json)
   and for the bundled Qwen-Image-Edit workflow (workflows/qwen_image_edit.api.json,
   one step) on its input image uploaded through /upload/image.
2. Upload (dedup, rename, overwrite) and the image-to-image workflow
   (workflows/qwen_image_i2i.api.json) on the uploaded image; re-queued
   unchanged it is served from the cache, re-queued after the upload is
   overwritten with other pixels it re-runs LoadImage and what follows.
3. A prompt failing at execution reports execution_error; the queue goes on.
   A prompt with a class Kiln cannot run is refused at validation, named;
   /object_info lists only the classes Kiln runs, as ComfyUI does.
4. Interrupt a running prompt; queue front/delete/clear; history delete.
5. ~1000 hostile requests (bad JSON, huge bodies, bad multipart, traversal
   and symlink escapes in /view and /upload, unknown routes, raw garbage,
   WS garbage, mid-run disconnects), then the server still renders the next
   good prompt exactly, and nothing outside input/output/temp changed.
Exit 77 (skip) when python3-websocket is missing.
"""
import concurrent.futures
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kiln_client import SKIP, Server, follow, wait_for, websocket  # noqa: E402

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
T2I = os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")
I2I = os.path.join(SRC, "workflows", "qwen_image_i2i.api.json")
FLUX = os.path.join(SRC, "workflows", "flux_dev_t2i.api.json")
EDIT = os.path.join(SRC, "workflows", "qwen_image_edit.api.json")
EDIT_IMAGE = "image_qwen_image_edit_input_image.png"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def with_inputs(prompt, node, **inputs):
    p = json.loads(json.dumps(prompt))
    p[node]["inputs"].update(inputs)
    return p


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def tree(root, skip=()):
    """{relative path: (kind, bytes or link target)} of everything under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel.split(os.sep)[0] in skip:
            dirs[:] = []
            continue
        for n in dirs + files:
            p = os.path.join(d, n)
            if os.path.islink(p):
                out[os.path.join(rel, n)] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                out[os.path.join(rel, n)] = ("file", open(p, "rb").read())
            else:
                out[os.path.join(rel, n)] = ("dir", None)
    return out


def cli_render(prompts):
    """PNG bytes `kiln run` writes for each prompt (one process: shared cache, as the server)."""
    out = os.path.join(WORK, "cli_output")
    files = [write_json(os.path.join(WORK, "cli_%d.json" % i), p) for i, p in enumerate(prompts)]
    r = subprocess.run([KILN, "run", "--models", MODELS, "--output", out, "--input", os.path.join(WORK, "cli_input"),
                        "--json"] + files, capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, "kiln run renders the reference images")
    pngs = []
    for line in r.stdout.splitlines():
        ev = json.loads(line)
        if ev["type"] == "executed":
            pngs.append(open(ev["data"]["paths"][0], "rb").read())
    return pngs


def main():
    if websocket is None:
        print("SKIP: python3-websocket is not installed")
        return SKIP
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    t2i = json.load(open(T2I))
    final_prompt = with_inputs(t2i, "3", seed=777)
    flux = json.load(open(FLUX))
    edit = with_inputs(json.load(open(EDIT)), "3", steps=1)  # one step: the ~1 Mpx edit tokens cost the rest
    os.makedirs(os.path.join(WORK, "cli_input"))
    shutil.copy(os.path.join(SRC, "workflows", EDIT_IMAGE), os.path.join(WORK, "cli_input", EDIT_IMAGE))
    ref_first, ref_final, ref_flux, ref_edit = cli_render([t2i, final_prompt, flux, edit])

    # Files the server must never touch, and symlinks planted to reach them.
    outside = os.path.join(WORK, "outside")
    os.makedirs(outside)
    open(os.path.join(outside, "secret.png"), "wb").write(b"SECRET" * 10)
    srv = Server(KILN, os.path.join(WORK, "srv"), MODELS, ["--max-upload-size", "4"])
    for folder in ("input", "output", "temp"):
        os.symlink(outside, os.path.join(srv.dirs[folder], "evil_dir"))
        os.symlink(os.path.join(outside, "secret.png"), os.path.join(srv.dirs[folder], "evil_file.png"))
    before_outside = tree(outside)
    srv_root = os.path.join(WORK, "srv")
    before_root = tree(srv_root, skip=("input", "output", "temp"))
    try:
        run_tests(srv, t2i, ref_first, final_prompt, ref_final, flux, ref_flux, edit, ref_edit)
    finally:
        rc, log = srv.stop()
    check(rc == 0, "server stops cleanly on SIGTERM (exit %s)" % rc)
    check("Sanitizer" not in log and "runtime error:" not in log, "no sanitizer report in the server log")
    if "Sanitizer" in log or "runtime error:" in log:
        print(log[-6000:])
    check(tree(outside) == before_outside, "nothing outside the server's folders was changed")
    after_root = tree(srv_root, skip=("input", "output", "temp"))
    check(set(after_root) - set(before_root) <= {"server.log"}, "no file created next to the server's folders")
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


def run_tests(srv, t2i, ref_first, final_prompt, ref_final, flux, ref_flux, edit, ref_edit):
    cid = uuid.uuid4().hex
    ws = srv.ws(cid)
    hello = json.loads(ws.recv())
    check(hello["type"] == "status" and hello["data"]["sid"] == cid
          and hello["data"]["status"]["exec_info"]["queue_remaining"] == 0, "ws: status with sid on connect")

    # ---- 1. bundled workflow ----
    st, r = srv.post_json("/prompt", {"prompt": t2i, "client_id": cid})
    check(st == 200 and set(r) == {"prompt_id", "number", "node_errors"} and r["node_errors"] == {},
          "POST /prompt: {prompt_id, number, node_errors}")
    pid = r["prompt_id"]
    msgs = follow(ws, pid)
    kinds = [m["type"] for m in msgs]
    check(kinds[0] in ("status", "execution_start") and "execution_start" in kinds and "execution_cached" in kinds,
          "ws: execution_start, execution_cached")
    check(any(m["type"] == "progress" and m["data"]["node"] == "3" and m["data"]["max"] == 4 for m in msgs),
          "ws: progress from the KSampler")
    executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
    check(executing[-1] is None and "3" in executing and "60" in executing, "ws: executing per node, then node null")
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    check(len(executed) == 1 and executed[0]["node"] == "60" and executed[0]["prompt_id"] == pid,
          "ws: executed for SaveImage")
    check(kinds.index("execution_success") < len(kinds) - 1, "ws: execution_success before the end marker")
    st, h = srv.get_json("/history/" + pid)
    entry = h.get(pid, {})
    check(entry.get("status", {}).get("status_str") == "success" and entry["status"]["completed"] is True,
          "/history/{id}: success")
    check([m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"],
          "/history: status.messages")
    check(entry.get("prompt", [None, None])[1] == pid and len(entry["prompt"]) == 5, "/history: prompt tuple")
    image = entry["outputs"]["60"]["images"][0]
    check(image == executed[0]["output"]["images"][0] and set(image) == {"filename", "subfolder", "type"},
          "/history outputs match executed")
    st, png = srv.view(image)
    check(st == 200 and png == ref_first, "/view bytes equal `kiln run`'s PNG for the same prompt")
    st, png2 = srv.get("/api/view?filename=%s&type=output" % image["filename"])
    check(st == 200 and png2 == png, "/api alias and default subfolder")
    flux_over_ws(srv, ws, cid, flux, ref_flux)
    edit_over_ws(srv, ws, cid, edit, ref_edit)

    # ---- 2. upload + image to image ----
    st, up = srv.upload("example.png", png)
    check(st == 200 and up == {"name": "example.png", "subfolder": "", "type": "input"}, "upload: stored as sent")
    st, up2 = srv.upload("example.png", png)
    check(st == 200 and up2["name"] == "example.png", "upload: identical bytes reuse the name")
    st, up3 = srv.upload("example.png", png + b"x")
    check(st == 200 and up3["name"] == "example (1).png", "upload: different bytes get 'example (1).png'")
    st, up4 = srv.upload("example (1).png", png, overwrite="true")
    check(st == 200 and up4["name"] == "example (1).png"
          and open(os.path.join(srv.dirs["input"], "example (1).png"), "rb").read() == png, "upload: overwrite")
    st, up5 = srv.upload("pasted.png", png, subfolder="clip/board", type_="temp")
    check(st == 200 and up5 == {"name": "pasted.png", "subfolder": "clip/board", "type": "temp"}
          and os.path.isfile(os.path.join(srv.dirs["temp"], "clip", "board", "pasted.png")), "upload: subfolder, type")
    st, v = srv.get("/view?filename=pasted.png&subfolder=clip/board&type=temp")
    check(st == 200 and v == png, "/view of the upload")
    i2i = json.load(open(I2I))
    st, r = srv.post_json("/prompt", {"prompt": i2i, "client_id": cid})
    check(st == 200, "i2i prompt accepted")
    msgs = follow(ws, r.get("prompt_id", ""))
    ok = any(m["type"] == "execution_success" for m in msgs)
    check(ok, "i2i workflow on the uploaded image succeeds")
    st, h = srv.get_json("/history/" + r.get("prompt_id", ""))
    img = h.get(r.get("prompt_id"), {}).get("outputs", {}).get("60", {}).get("images", [{}])[0]
    st, out = srv.view(img) if img else (0, b"")
    check(st == 200 and out[:8] == b"\x89PNG\r\n\x1a\n" and img["filename"].startswith("ComfyUI_i2i_"), "i2i image served")
    cache_follows_uploads(srv, ws, cid, i2i, img, out, ref_final)

    # ---- 3. failures go on ----
    st, r = srv.post_json("/prompt", {"prompt": with_inputs(t2i, "60", filename_prefix="../escape"), "client_id": cid})
    msgs = follow(ws, r["prompt_id"])
    err = [m["data"] for m in msgs if m["type"] == "execution_error"]
    check(len(err) == 1 and err[0]["node_id"] == "60" and "outside the output folder" in err[0]["exception_message"],
          "SaveImage outside the output folder: execution_error naming the node")
    st, h = srv.get_json("/history/" + r["prompt_id"])
    check(h[r["prompt_id"]]["status"]["status_str"] == "error", "history records the failure")
    st, bad = srv.post_json("/prompt", {"prompt": with_inputs(t2i, "3", steps=0)})
    check(st == 400 and bad["error"]["type"] == "prompt_outputs_failed_validation"
          and bad["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min", "400 with node_errors")
    st, bad = srv.post_json("/prompt", {"nope": 1})
    check(st == 400 and bad["error"]["type"] == "no_prompt", "400 no_prompt")
    # A class the registry knows (ComfyUI's schema) but Kiln cannot run: refused before queueing.
    ref = json.load(open(os.path.join(SRC, "tests", "fixtures", "workflows", "object_info.json")))
    st, info = srv.get_json("/object_info")
    takes = {"MODEL": "model", "CONDITIONING": "positive", "LATENT": "latent_image"}
    cannot = [c for c in sorted(set(ref) - set(info)) if ref[c]["output"] and ref[c]["output"][0] in takes]
    if not cannot:
        print("     (every class of object_info.json runs: no unimplemented class to refuse)")
    for cls in cannot[:1]:
        guided = with_inputs(t2i, "3", **{takes[ref[cls]["output"][0]]: ["90", 0]})
        guided["90"] = {"class_type": cls, "inputs": {}, "_meta": {"title": "Guidance"}}
        st, bad = srv.post_json("/prompt", {"prompt": guided, "client_id": cid})
        ne = bad.get("node_errors", {}).get("90", {}) if st == 400 else {}
        err0 = (ne.get("errors") or [{}])[0]
        check(st == 400 and bad["error"]["type"] == "prompt_outputs_failed_validation"
              and ne.get("class_type") == cls and err0.get("type") == "missing_node_type"
              and err0.get("message") == "Node 'Guidance' (%s) is not implemented by Kiln." % cls
              and "KSampler" in err0.get("details", ""), "unimplemented class: 400 naming node 90 and why")
    st, q = srv.get_json("/queue")
    check(q["queue_running"] == [] and q["queue_pending"] == [], "the refused prompt was not queued")

    # ---- 4. interrupt, queue, history ----
    long_prompt = with_inputs(t2i, "3", steps=400, seed=1)
    st, r = srv.post_json("/prompt", {"prompt": long_prompt, "client_id": cid})
    a = r["prompt_id"]
    wait_for(ws, lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == a)
    others = []
    for i in range(3):
        st, r = srv.post_json("/prompt", {"prompt": with_inputs(t2i, "3", steps=400, seed=10 + i), "client_id": cid,
                                          "front": i == 2})
        others.append(r)
    st, q = srv.get_json("/queue")
    check([x[1] for x in q["queue_running"]] == [a] and sorted(x[1] for x in q["queue_pending"])
          == sorted(o["prompt_id"] for o in others), "GET /queue: running and pending tuples")
    check(others[2]["number"] < 0 < others[1]["number"], "front: true gets a negative number")
    st, _ = srv.request("POST", "/queue", {"delete": [others[1]["prompt_id"]]})
    st2, q = srv.get_json("/queue")
    check(st == 200 and sorted(x[1] for x in q["queue_pending"])
          == sorted([others[0]["prompt_id"], others[2]["prompt_id"]]), "POST /queue delete")
    st, _ = srv.request("POST", "/queue", {"clear": True})
    st2, q = srv.get_json("/queue")
    check(st == 200 and q["queue_pending"] == [] and len(q["queue_running"]) == 1, "POST /queue clear")
    st, _ = srv.request("POST", "/interrupt", {"prompt_id": "not-running"})
    st, _ = srv.request("POST", "/interrupt", {"prompt_id": a})
    msgs = follow(ws, a)
    intr = [m["data"] for m in msgs if m["type"] == "execution_interrupted"]
    check(st == 200 and len(intr) == 1 and intr[0]["node_id"] == "3", "interrupt: execution_interrupted at the sampler")
    st, h = srv.get_json("/history")
    check(h[a]["status"]["status_str"] == "error" and h[a]["status"]["messages"][-1][0] == "execution_interrupted"
          and not any(o["prompt_id"] in h for o in others), "history: interrupted, dropped prompts absent")
    st, h2 = srv.get_json("/history?max_items=2")
    check(list(h2) == list(h)[-2:], "history max_items: the last N")
    st, _ = srv.request("POST", "/history", {"delete": [a]})
    st, h3 = srv.get_json("/history/" + a)
    check(st == 200 and h3 == {}, "POST /history delete; unknown id -> {}")
    st, info = srv.get_json("/object_info/KSampler")
    check(st == 200 and list(info) == ["KSampler"] and "input_order" in info["KSampler"], "/object_info/{class}")
    st, info = srv.get_json("/object_info")
    check("qwen_image_fp8_e4m3fn.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0],
          "/object_info lists the model files")
    ref = json.load(open(os.path.join(SRC, "tests", "fixtures", "workflows", "object_info.json")))
    runs = {"KSampler", "LoadImage", "SaveImage", "UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly",
            "TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus", "CFGNorm", "FluxKontextImageScale",
            "ConditioningCombine", "ReferenceLatent", "EasyCache", "LazyCache"}
    check(runs <= set(info) and set(info) <= set(ref) | {"ImageScale", "SaveLatent", "LoadLatent", "ReferenceLatent",
                                                         "EasyCache", "LazyCache"},
          "/object_info lists the classes Kiln runs, no others")
    differ = [c for c in info if c in ref and without_files(info[c]) != without_files(ref[c])]
    check(not differ, "/object_info equals ComfyUI's for the classes Kiln runs (file lists aside): %s" % differ)
    for cls in sorted(set(ref) - set(info))[:1]:
        check(srv.get_json("/object_info/" + cls) == (200, {}), "/object_info/{class Kiln cannot run} -> {}")
    st, m = srv.get_json("/models/diffusion_models")
    check(st == 200 and m == ["flux1-dev.safetensors", "flux1-schnell.safetensors", "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                              "qwen_image_edit_fp8_e4m3fn.safetensors", "qwen_image_fp8_e4m3fn.safetensors",
                              "z_image_turbo_bf16.safetensors"], "/models/{folder}: %s" % m)
    check(srv.get("/models/nope")[0] == 404 and srv.get("/models/input")[0] == 404, "/models/unknown -> 404")
    for path in ("/embeddings", "/extensions", "/system_stats", "/prompt", "/features", "/", "/app.js", "/style.css"):
        check(srv.get(path)[0] == 200 and srv.get("/api" + path if path != "/" else "/api/prompt")[0] == 200,
              "GET %s (and /api)" % path)
    ws.close()

    # ---- 5. hostile input ----
    n = hostile(srv, t2i)
    check(srv.alive(), "server alive after %d hostile requests" % n)
    ws = srv.ws(cid)
    ws.recv()
    st, r = srv.post_json("/prompt", {"prompt": final_prompt, "client_id": cid})
    msgs = follow(ws, r["prompt_id"])
    st, h = srv.get_json("/history/" + r["prompt_id"])
    img = h[r["prompt_id"]]["outputs"]["60"]["images"][0]
    st, png = srv.view(img)
    check(st == 200 and png == ref_final, "after the hostile phase the next prompt renders exactly as `kiln run`")
    ws.close()


def flux_over_ws(srv, ws, cid, flux, ref_flux):
    """The Flux.1 dev workflow (DualCLIPLoader flux, FluxGuidance, SamplerCustomAdvanced) queued
    as a ComfyUI client queues it: progress and executed on the socket, /view bytes as `kiln run`."""
    st, served = srv.get_json("/workflows/flux_dev_t2i.api.json")
    check(st == 200 and served == flux, "GET /workflows/flux_dev_t2i.api.json: the bundled file the UI offers")
    st, r = srv.post_json("/prompt", {"prompt": flux, "client_id": cid})
    check(st == 200 and r.get("node_errors") == {}, "Flux dev: POST /prompt accepted (%s)" % st)
    if st != 200:
        return
    pid = r["prompt_id"]
    msgs = follow(ws, pid)
    steps = [m["data"]["value"] for m in msgs if m["type"] == "progress" and m["data"]["node"] == "13"
             and m["data"]["max"] == 4 and m["data"]["prompt_id"] == pid]
    check(steps == [1, 2, 3, 4], "Flux dev ws: progress 1..4 from SamplerCustomAdvanced: %s" % steps)
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    check(len(executed) == 1 and executed[0]["node"] == "9" and executed[0]["prompt_id"] == pid
          and any(m["type"] == "execution_success" for m in msgs), "Flux dev ws: executed for SaveImage, success")
    st, png = srv.view(executed[0]["output"]["images"][0]) if executed else (0, b"")
    check(st == 200 and png == ref_flux, "Flux dev: /view bytes equal `kiln run`'s PNG for the same prompt")


def edit_over_ws(srv, ws, cid, edit, ref_edit):
    """The Qwen-Image-Edit workflow on its input image uploaded as a client uploads it: the
    render's /view bytes equal `kiln run`'s for the same prompt and image."""
    st, up = srv.upload(EDIT_IMAGE, open(os.path.join(SRC, "workflows", EDIT_IMAGE), "rb").read())
    check(st == 200 and up.get("name") == EDIT_IMAGE, "Edit: the input image uploads under its name")
    st, r = srv.post_json("/prompt", {"prompt": edit, "client_id": cid})
    check(st == 200 and r.get("node_errors") == {}, "Edit: POST /prompt accepted (%s)" % st)
    if st != 200:
        return
    msgs = follow(ws, r["prompt_id"], timeout=600)  # the sanitizer build is several times slower
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    check(len(executed) == 1 and executed[0]["node"] == "60" and any(m["type"] == "execution_success" for m in msgs),
          "Edit ws: executed for SaveImage, success")
    st, png = srv.view(executed[0]["output"]["images"][0]) if executed else (0, b"")
    check(st == 200 and png == ref_edit, "Edit: /view bytes equal `kiln run`'s PNG for the same prompt and image")


def without_files(entry):
    """An object_info entry with its file-name choices (the models folder's listing) blanked and
    numbers read as a JavaScript front end reads them (the seed maximum 2^64 - 1 is a double there)."""
    e = json.loads(json.dumps(entry), parse_int=float)
    for section in e["input"].values():
        for name, spec in section.items():
            if name in ("unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "lora_name", "image"):
                spec[0] = []
    return e


def cache_follows_uploads(srv, ws, cid, i2i, img, first_png, other_png):
    """An unchanged re-queue is served from the cache; the upload overwritten with
    other pixels re-runs LoadImage and what follows (its cache key hashes the file)."""
    st, r = srv.post_json("/prompt", {"prompt": i2i, "client_id": cid})
    msgs = follow(ws, r.get("prompt_id", ""))
    cached = [m["data"]["nodes"] for m in msgs if m["type"] == "execution_cached"]
    ran = [m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"]["node"] is not None]
    shown = [m["data"]["output"]["images"][0] for m in msgs if m["type"] == "executed"]
    check(cached and set(cached[0]) == set(i2i) and ran == [] and shown == [img],
          "unchanged i2i re-queue: every node cached, LoadImage and downstream included (ran %s)" % ran)
    st, up = srv.upload("example.png", other_png, overwrite="true")
    check(st == 200 and up["name"] == "example.png", "upload overwrites example.png with other pixels")
    st, r = srv.post_json("/prompt", {"prompt": i2i, "client_id": cid})
    msgs = follow(ws, r.get("prompt_id", ""))
    cached = [m["data"]["nodes"] for m in msgs if m["type"] == "execution_cached"]
    ran = [m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"]["node"] is not None]
    check(sorted(ran) == sorted(["71", "72", "3", "8", "60"]) and cached
          and sorted(cached[0]) == sorted(["37", "38", "39", "6", "7", "66"]),
          "re-queue after the overwrite runs LoadImage and what follows, loaders cached (ran %s)" % ran)
    st, h = srv.get_json("/history/" + r.get("prompt_id", ""))
    new = h.get(r.get("prompt_id"), {}).get("outputs", {}).get("60", {}).get("images", [{}])[0]
    st, png = srv.view(new) if new.get("filename") else (0, b"")
    check(st == 200 and new["filename"] != img["filename"] and png[:8] == b"\x89PNG\r\n\x1a\n" and png != first_png,
          "a new output with other bytes")


def raw(srv, data, read=True, timeout=10):
    """Sends raw bytes; returns the reply's status code (0 when none)."""
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
            s.sendall(data)
            if not read:
                return 0
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while len(reply) < 64:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            parts = reply.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except OSError:
        return 0


def hostile(srv, t2i):
    rnd = random.Random(1234)
    results = []  # (what, status, allowed statuses)

    def req(what, method, path, body=None, headers=None, allowed=(400,)):
        try:
            st, _ = srv.request(method, path, body, headers, timeout=30)
        except OSError:
            st = 0  # the server may close on a body it refused
        results.append((what, st, allowed))

    def blob(n):
        return bytes(rnd.getrandbits(8) for _ in range(n))

    jobs = []
    # bad JSON and bad prompts
    bad_bodies = [b"", b"{", b"nul", b"[1,2", b"\xff\xfe\x00", b"{\"prompt\": }", b"[" * 5000 + b"]" * 5000,
                  b"{\"prompt\": " + b"[" * 3000 + b"]" * 3000 + b"}", b"\"str\"", b"123", b"[]", b"null"]
    for b in bad_bodies:
        for path in ("/prompt", "/api/prompt", "/queue", "/history", "/free"):
            jobs.append(("bad json " + path, "POST", path, b, None, (400,)))
    weird_prompts = [5, "x", [], {"1": 5}, {"1": {"class_type": "Nope"}}, {"1": {"inputs": {}}},
                     {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}},
                     {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}},
                     with_inputs(t2i, "3", seed=-1), with_inputs(t2i, "3", cfg="abc"),
                     with_inputs(t2i, "37", unet_name="../../../etc/passwd"),
                     with_inputs(t2i, "37", unet_name="/etc/passwd"),
                     with_inputs(t2i, "3", model=["999", 0]), with_inputs(t2i, "3", model=["66", 7])]
    for p in weird_prompts:
        jobs.append(("bad prompt", "POST", "/prompt", json.dumps({"prompt": p}).encode(), None, (400,)))
    for body in ({"prompt": t2i, "number": "x"}, {"prompt": t2i, "prompt_id": {"a": 1}},
                 {"prompt": t2i, "prompt_id": "x" * 5000}, {"prompt": t2i, "extra_data": [1]},
                 {"prompt": t2i, "partial_execution_targets": ["nope"]}):
        jobs.append(("bad fields", "POST", "/prompt", json.dumps(body).encode(), None, (200, 400)))
    for _ in range(300):
        jobs.append(("random json", "POST", rnd.choice(["/prompt", "/queue", "/history", "/interrupt"]),
                     blob(rnd.randint(1, 300)), None, (200, 400)))
    # huge bodies (cap is 4 MiB here)
    big = b"{\"prompt\": \"" + b"a" * (5 << 20) + b"\"}"
    for path in ("/prompt", "/upload/image", "/queue"):
        jobs.append(("huge body", "POST", path, big, None, (413, 0)))
    # bad multipart
    ct = {"Content-Type": "multipart/form-data; boundary=XX"}
    for b in (b"", b"--XX", b"--XX\r\n", b"--XX\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
              b"--XX\r\n\r\n\r\nabc\r\n--XX--", b"garbage" * 100, b"--XX\r\n" + b"H: v\r\n" * 3000,
              (b"--XX\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n") * 40 + b"--XX--",
              b"--XX\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nnofilename\r\n--XX--"):
        jobs.append(("bad multipart", "POST", "/upload/image", b, ct, (400,)))
    for h in ({"Content-Type": "multipart/form-data"}, {"Content-Type": "text/plain"},
              {"Content-Type": "multipart/form-data; boundary=\"" + "b" * 300 + "\""}):
        jobs.append(("bad content type", "POST", "/upload/image", b"--XX--", h, (400,)))
    for _ in range(200):
        jobs.append(("random multipart", "POST", "/upload/image", b"--XX\r\n" + blob(rnd.randint(0, 400)), ct, (400,)))
    # unknown routes and methods
    for path in ("/nope", "/api/nope", "/api", "/api/", "/prompt/x", "/view/x", "/object_info/", "/history/",
                 "/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/x" * 2000, "/.hidden", "/ui/../../x", "/api/x/../../etc/passwd",
                 "/workflows/../CMakeLists.txt", "/workflows/%2e%2e%2fCMakeLists.txt", "/index.html/x"):
        jobs.append(("unknown route " + path[:30], "GET", path, None, None,
                     (200, 404) if path in ("/api", "/api/") else (404, 400, 414, 0)))
    for m in ("DELETE", "PUT", "PATCH"):
        jobs.append(("bad method", m, "/prompt", None, None, (405,)))
    jobs.append(("GET on POST route", "GET", "/interrupt", None, None, (405,)))
    jobs.append(("cross-origin POST", "POST", "/prompt", json.dumps({"prompt": t2i}).encode(),
                 {"Origin": "http://evil.example"}, (403,)))
    for _ in range(150):
        path = "/" + "".join(rnd.choice("abcxyz/._%~") for _ in range(rnd.randint(1, 40)))
        jobs.append(("random path", rnd.choice(["GET", "POST"]), path, None, None, (400, 404, 405, 0)))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: req(*j), jobs))
    n = len(jobs)

    # traversal and symlink escapes in /view
    views = ["filename=../secret.png", "filename=..%2Fsecret.png", "filename=/etc/passwd", "filename=%2Fetc%2Fpasswd",
             "filename=secret.png&subfolder=..", "filename=secret.png&subfolder=../outside",
             "filename=secret.png&subfolder=/", "filename=secret.png&subfolder=evil_dir",
             "filename=evil_file.png", "filename=evil_file.png&type=input", "filename=evil_file.png&type=temp",
             "filename=evil_dir", "filename=secret.png%20[input]&subfolder=evil_dir",
             "filename=passwd&subfolder=../../../../../../etc", "filename=x&type=../../etc",
             "filename=..", "filename=.", "filename=", "filename=a%00b", "subfolder=x", "filename=%0a",
             "filename=server.log&subfolder=..", "filename=evil_dir/secret.png", "filename=secret.png&subfolder=a/../..",
             "filename=secret.png&subfolder=./evil_dir", "filename=" + "a" * 10000]
    for q in views:
        st, body = srv.get("/view?" + q)
        results.append(("view " + q[:60], st, (400, 403, 404, 414, 0)))
        if b"SECRET" in body:
            results.append(("view leaked the secret: " + q, 200, ()))
    n += len(views)
    # traversal and symlink escapes in /upload
    names = ["../x.png", "..", ".", "/abs.png", "a/b.png", "a\\b.png", "x\x01.png", "", "x" * 300]
    subs = ["..", "../outside", "/tmp", "evil_dir", "evil_dir/sub", "a/../../x", "a/..", "\\x", "x\x00y",
            "ok/../..", "evil_file.png"]
    for name in names:
        st, _ = srv.upload(name, b"data")
        results.append(("upload name %r" % name[:30], st, (400,)))
    for sub in subs:
        for t in ("input", "output", "temp"):
            st, _ = srv.upload("f.png", b"data", subfolder=sub, type_=t)
            results.append(("upload subfolder %r %s" % (sub, t), st, (400,)))
    for t in ("input", "output", "temp"):
        st, r = srv.upload("evil_file.png", b"NEW", overwrite="true", type_=t)
        results.append(("upload overwrite through a symlink (%s)" % t, st, (400,)))
        st, r = srv.upload("evil_file.png", b"NEW", type_=t)
        st, r2 = srv.upload("evil_dir", b"NEW", type_=t)
        results.append(("upload named like a symlinked folder is renamed (%s)" % t,
                        st if r2.get("name") != "evil_dir" else 0, (200,)))
        results.append(("upload next to a symlink is renamed (%s)" % t, st if r.get("name") != "evil_file.png" else 0,
                        (200,)))
    n += len(names) + 3 * len(subs) + 9
    # raw protocol garbage
    garbage = [b"\r\n\r\n", b"GET\r\n\r\n", b"GARBAGE / HTTP/1.1\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
               b"GET /prompt HTTP/1.1\r\n" + b"X-A: " + b"a" * 100000 + b"\r\n\r\n",
               b"POST /prompt HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
               b"POST /prompt HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
               b"POST /prompt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
               b"POST /prompt HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro",
               b"GET /view?filename=../../etc/passwd HTTP/1.1\r\n\r\n"]
    for _ in range(40):
        garbage.append(blob(rnd.randint(1, 2000)))
    for g in garbage:
        st = raw(srv, g, timeout=5)
        results.append(("raw garbage", st, (0, 400, 404, 405, 411, 413, 414, 431, 500, 505)))
    n += len(garbage)
    # websocket garbage and disconnects
    for i in range(30):
        try:
            w = srv.ws(rnd.choice(["", "x" * 500, "a\"b", uuid.uuid4().hex]))
            w.recv()
            for _ in range(5):
                if rnd.random() < 0.5:
                    w.send(blob(rnd.randint(0, 3000)).decode("latin-1"))
                else:
                    w.send_binary(blob(rnd.randint(0, 3000)))
            w.send('{"type": "feature_flags", "data": {}}')
            if i % 2:
                w.close()
            else:
                w.sock.close()  # vanish without a close frame
        except Exception as e:  # noqa: BLE001 - the server may close sockets that misbehave
            results.append(("ws garbage %s" % e, 0, (0,)))
    for i in range(10):  # raw frames a library would refuse to send
        hs = (b"GET /ws?clientId=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        frames = [b"\x81\x7f" + (1 << 62).to_bytes(8, "big"), b"\x8f\x85" + blob(9), b"\x81\x7e\xff\xff" + blob(50),
                  blob(100), b"\x01\x80" + blob(4)]
        raw(srv, hs + frames[i % len(frames)], read=False)
    n += 40
    # clients vanishing mid-run: a long prompt whose socket and requests disappear
    cid = uuid.uuid4().hex
    w = srv.ws(cid)
    w.recv()
    st, r = srv.post_json("/prompt", {"prompt": with_inputs(t2i, "3", steps=60, seed=3), "client_id": cid})
    wait_for(w, lambda m: m["type"] == "progress")
    w.sock.close()
    raw(srv, b"POST /prompt HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"prompt\":", read=False)
    raw(srv, b"GET /object_info HTTP/1.1\r\n\r\n", read=False)
    w = srv.ws(cid)  # the same sid reconnects and still gets the end of the run
    w.recv()
    msgs = follow(w, r["prompt_id"])
    results.append(("reconnected client gets the end marker", 200 if msgs else 0, (200,)))
    w.close()
    n += 4

    bad = [(w, st, a) for w, st, a in results if st not in a]
    for what, st, allowed in bad[:20]:
        print("     unexpected %s for %s (allowed %s)" % (st, what, allowed))
    check(not bad, "hostile requests answered with the expected status (%d checked)" % len(results))
    st, _ = srv.get("/system_stats")
    check(st == 200, "server answers after the hostile phase")
    return n


if __name__ == "__main__":
    sys.exit(main())
