#!/usr/bin/env python3
"""EasyCache / LazyCache: sampler time saved against the drift they cause.

    bench/stepcache.py [--kiln KILN] [--models DIR] [--workflow NAME|FILE] [--steps N]
                       [--size PX] [--cfg X] [--reps R] [CACHE:THRESHOLD ...]

Runs the workflow's sampler uncached and with each cache (default:
EasyCache:0.2 EasyCache:0.4 EasyCache:0.8 LazyCache:0.2 LazyCache:0.4, ComfyUI's
start 0.15 / end 0.95), each in its own `kiln run --json`, with the sampler's
latent saved instead of the image. The sampler node is timed from the event
stream (its "executing" event to the next one): wall time, and the CPU time
of kiln's threads over that span (/proc, with OMP_WAIT_POLICY=PASSIVE so that
waiting threads do not spin; on a shared machine the speedup is taken from
it), the best of R runs. Prints per case ComfyUI's skip count, the
DiT forwards run, the sampler's times, the speedup against the uncached run
(CPU time), the speedup ComfyUI logs (steps / steps computed) and the relative
L2 distance of its latent from the uncached one. The default models folder is the build's tiny
set (random weights: the skip counts and drift are the tiny models', the time
per skipped step is what carries over); pass --models for real weights.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from stepcache_e2e import cached_prompt, latent, rel_l2, skips  # noqa: E402


def cpu_name():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return "%s, %d cores, %s" % (name, os.cpu_count(), " ".join(isa))


def cpu_seconds(pid):
    """User + system time of every thread of pid so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampler_run(kiln, models, prompt_file, out, sampler_id):
    """(sampler wall seconds, sampler CPU seconds, stderr) of one `kiln run --json`."""
    args = [kiln, "run", "--json", "--output", out] + (["--models", models] if models else []) + [prompt_file]
    # idle OpenMP threads sleep instead of spinning, so CPU time counts work only
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start = seconds = cpu = None
    for line in p.stdout:
        now = time.monotonic()
        ev = json.loads(line)
        data = ev.get("data") or {}
        if ev["type"] == "executing" and data.get("node") == sampler_id:
            start, cpu = now, cpu_seconds(p.pid)
        elif start is not None and seconds is None and ev["type"] in ("executing", "executed", "execution_success"):
            seconds, cpu = now - start, cpu_seconds(p.pid) - cpu
    err = p.stderr.read()
    if p.wait() != 0 or seconds is None:
        sys.exit("kiln run failed on %s:\n%s" % (prompt_file, err[-2000:]))
    return seconds, cpu, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--models", help="models folder (default: kiln's, the build's tiny set)")
    ap.add_argument("--workflow", default="z_image_turbo_t2i", help="a bundled workflow's name or an API file")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=256, help="EmptySD3LatentImage width and height")
    ap.add_argument("--cfg", type=float, help="the KSampler's cfg (default: the workflow's)")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("KN_BENCH_REPS", "1")))
    ap.add_argument("cases", nargs="*", default=["EasyCache:0.2", "EasyCache:0.4", "EasyCache:0.8",
                                                 "LazyCache:0.2", "LazyCache:0.4"])
    a = ap.parse_args()
    path = a.workflow if os.path.isfile(a.workflow) else os.path.join(ROOT, "workflows", a.workflow + ".api.json")
    api = json.load(open(path))
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=a.size, height=a.size)
        if n["class_type"] in ("KSampler", "BasicScheduler"):
            n["inputs"]["steps"] = a.steps
        if n["class_type"] == "KSampler" and a.cfg is not None:
            n["inputs"]["cfg"] = a.cfg
    (sampler_id,) = [k for k, n in api.items() if n["class_type"] in ("KSampler", "SamplerCustomAdvanced")]
    cfg = next((n["inputs"]["cfg"] for n in api.values() if n["class_type"] == "KSampler"), 1.0)
    per_step = 1 if abs(cfg - 1.0) < 1e-9 else 2

    print("CPU: %s" % cpu_name())
    print("workflow %s, %dx%d, %d steps, cfg %g, models %s, best of %d" %
          (os.path.basename(path), a.size, a.size, a.steps, cfg, a.models or "(kiln's default)", a.reps))
    print("%-16s %9s %13s %8s %8s %8s %8s %13s" % ("case", "skipped", "DiT forwards", "wall s", "CPU s", "speedup",
                                                    "logged", "rel L2 drift"))
    work = tempfile.mkdtemp(prefix="kiln-stepcache-")
    base, base_cpu = None, None
    for case in ["none"] + a.cases:
        cache, _, threshold = case.partition(":")
        prefix = case.replace(":", "_").replace(".", "p")
        kw = {"reuse_threshold": float(threshold)} if cache != "none" else {}
        f = os.path.join(work, prefix + ".json")
        with open(f, "w") as fh:
            json.dump(cached_prompt(api, None if cache == "none" else cache, prefix, **kw), fh)
        wall = cpu = None
        for r in range(a.reps):
            s, c, err = sampler_run(a.kiln, a.models, f, os.path.join(work, "out%d" % r), sampler_id)
            wall, cpu = (s, c) if wall is None else (min(wall, s), min(cpu, c))
        lat = latent(os.path.join(work, "out0"), prefix)
        skipped = skips(err)[0][0] if cache != "none" else 0
        if base is None:
            base, base_cpu = lat, cpu
        print("%-16s %6d/%-3d %13d %8.2f %8.2f %7.2fx %7.2fx %13.4g" %
              (case, skipped, a.steps, (a.steps - skipped) * per_step, wall, cpu, base_cpu / cpu,
               a.steps / (a.steps - skipped), rel_l2(lat, base)))


if __name__ == "__main__":
    main()
