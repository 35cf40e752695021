#!/usr/bin/env python3
"""One render with Kiln, timed and its memory watched (bench/fullsize.sh; stdlib only).

    fullsize.py --kiln KILN --models DIR --workflow FILE --size PX --steps N [--cfg X]

Runs `kiln run --json --timings` on the workflow (EmptySD3LatentImage at PX x PX, KSampler's steps and
cfg set by class); the timings event's peak_rss_mib is the exact peak of the whole process (--timings
resets the kernel's high-water mark at each node, so GNU time's maximum RSS only covers the last node
and is printed beside it). While it
runs, /proc/PID/status is read every 0.2 s: RssAnon (heap: activations, and any weight widened into a
copy) and RssFile (the mapped weight files' resident pages), each attributed to the node running then
(from the executing events on kiln's stdout), and the machine's MemAvailable. Prints the seconds per
DiT step, per text encode, of the VAE decode and the loaders, then per node its peak anonymous and
file-backed RSS, and the process's peak RSS.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

GIB = 2.0 ** 30


def status_kb(pid, keys):
    try:
        with open("/proc/%d/status" % pid) as f:
            got = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split(":")[0] in keys}
        return got if len(got) == len(keys) else None
    except (OSError, ValueError, IndexError):
        return None


def mem_available_kb():
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))


def prompt(path, size, steps, cfg):
    api = json.load(open(path))
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=size, height=size)
        if n["class_type"] == "KSampler":
            n["inputs"]["steps"] = steps
            if cfg is not None:
                n["inputs"]["cfg"] = cfg
    return api


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--workflow", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=None)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kiln-fullsize-run-")
    try:
        run(a, work)
    finally:
        shutil.rmtree(work)


def run(a, work):
    api = prompt(a.workflow, a.size, a.steps, a.cfg)
    cfg = next(n["inputs"]["cfg"] for n in api.values() if n["class_type"] == "KSampler")
    print("render: %s at %dx%d, %d steps, cfg %g (%s per DiT forward)" % (
        os.path.basename(a.workflow), a.size, a.size, a.steps, cfg,
        "cond alone" if cfg == 1 else "[uncond, cond] batched"), flush=True)
    path = os.path.join(work, "prompt.json")
    with open(path, "w") as f:
        json.dump(api, f)
    maxrss, events_path = os.path.join(work, "maxrss"), os.path.join(work, "events")
    # sh records its pid and becomes kiln, so the pid polled is kiln's, under GNU time
    cmd = ["/usr/bin/time", "-f", "%M", "-o", maxrss, "sh", "-c", 'echo $$ > "$0"; exec "$@"',
           os.path.join(work, "pid"), a.kiln, "run", "--json", "--timings", "--models", a.models,
           "--output", os.path.join(work, "out"), path]
    with open(events_path, "w") as out, open(os.path.join(work, "stderr"), "w") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
    peaks, order, node, avail, t0, part = {}, [], "(start)", mem_available_kb(), time.time(), ""
    with open(events_path) as ev:
        while p.poll() is None:
            lines = (part + ev.read()).split("\n")  # what was written since the last look
            part = lines.pop()  # a line not finished yet
            for line in lines:
                if '"executing"' in line:
                    d = json.loads(line)["data"]
                    if d.get("node"):
                        node = "%s %s" % (d["node"], api.get(d["node"], {}).get("class_type", "?"))
            try:
                with open(os.path.join(work, "pid")) as f:
                    pid = int(f.read())
            except (OSError, ValueError):
                pid = None
            s = status_kb(pid, ("RssAnon", "RssFile")) if pid else None
            if s:
                if node not in peaks:
                    order.append(node)
                    peaks[node] = [0, 0]
                peaks[node] = [max(peaks[node][0], s["RssAnon"]), max(peaks[node][1], s["RssFile"])]
            avail = min(avail, mem_available_kb())
            time.sleep(0.2)
    wall = time.time() - t0
    events = [json.loads(l) for l in open(events_path) if l.startswith("{")]
    if p.returncode != 0:
        sys.exit("kiln run failed (exit %d):\n%s\n%s" % (
            p.returncode, open(os.path.join(work, "stderr")).read()[-3000:],
            "\n".join(json.dumps(e) for e in events if e["type"] == "execution_error")))
    nodes = [e for e in events if e["type"] == "timings"][-1]["data"]["nodes"]
    by = lambda c: [n for n in nodes if n["class_type"] == c]
    steps = by("KSampler")[0]["steps"]
    if len(steps) > 1:
        print("DiT step: %.1f s (median of steps 2..%d; step 1 %.1f s, with the sampler's setup)" %
              (statistics.median(steps[1:]), len(steps), steps[0]))
    else:
        print("DiT step: %.1f s (the one step, with the sampler's setup)" % steps[0])
    print("text encoder: %s s (CLIPTextEncode, per prompt); VAE decode: %.1f s" % (
        ", ".join("%.1f" % n["seconds"] for n in by("CLIPTextEncode")), by("VAEDecode")[0]["seconds"]))
    print("loaders: " + ", ".join("%s %.1f s" % (c, by(c)[0]["seconds"])
                                  for c in ("CLIPLoader", "UNETLoader", "VAELoader")))
    print("wall: %.1f s in all; seconds per node: %s" % (
        wall, ", ".join("%s %.1f" % (n["class_type"], n["seconds"]) for n in nodes)))
    print("RSS peaks per node (polled every 0.2 s), anonymous / mapped files, GiB:")
    for n in order:
        print("  %-28s %6.2f / %6.2f" % (n, peaks[n][0] * 1024 / GIB, peaks[n][1] * 1024 / GIB))
    timings = [e for e in events if e["type"] == "timings"][-1]["data"]
    print("peak RSS: %.2f GiB (the whole process: the largest node peak of --timings; GNU time, since the last node "
          "began: %.2f GiB); lowest MemAvailable during the run: %.2f GiB" % (
              timings["peak_rss_mib"] / 1024, int(open(maxrss).read().split()[-1]) * 1024 / GIB, avail * 1024 / GIB))


if __name__ == "__main__":
    main()
