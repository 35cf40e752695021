#!/usr/bin/env python3
"""Kiln against stable-diffusion.cpp on the same random-weight files (bench/compare_sdcpp.sh).

    compare_sdcpp.py --kiln KILN --sdcpp SD_CLI --peak GFLOPS --dir DIR FAMILY SIZE...

Both programs render one image per run, txt2img at cfg 1 (one DiT forward per step), STEPS steps,
the same prompt, 2 threads each: Kiln through `kiln run --json --timings` (its own timings event),
sd.cpp through `sd-cli` (its own log lines and per-step progress). Each run is a fresh process; runs
alternate between the two programs and between the two DiT depths, REPS times over. Reported per
figure: the min and the median over the runs.

What is timed on each side:
- DiT step: the wall time of sampler steps 2..STEPS (step 1 carries each side's setup), one forward
  each. Per block: (step at the deeper file - step at the shallower) / the blocks between them.
- Text encoder: Kiln's CLIPTextEncode node; sd.cpp's "get_learned_condition completed" line.
- VAE decode: Kiln's VAEDecode node; sd.cpp's "decode_first_stage completed" line.
- Peak RSS: the whole process (/usr/bin/time), at the deeper DiT.
sd.cpp loads every model before it starts (--eager-load); Kiln renders two prompts in its process and
reports the second (another seed and prompt): its weights are memory-mapped and paged in on first use.
So neither side's timed figures include loading.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

PROMPT = "a red fox sitting in fresh snow, watercolor, soft morning light"
WARM_PROMPT = "a grey owl sitting on a pine branch, watercolor, soft evening light"

# DiT FLOPs per block per forward (GEMMs and attention, as Kiln's ops count them; norms, RoPE and
# activations left out): L tokens, width d, MLP width m. Qwen-Image and Flux double blocks have two
# streams over the joint sequence; a Flux single block does the same GEMM work (3d + 4d in, d + 4d out).
def block_flops(family, tokens):
    if family == "zimage":
        d, m = 3840, 10240
        return 2 * tokens * (4 * d * d + 3 * d * m) + 4 * tokens * tokens * d
    d, m = 3072, 4 * 3072
    return 2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens * tokens * d


# Per family: the files (names written by bench/models.sh's make), the blocks in each DiT depth, the
# text tokens the DiT sees (prompt + the template's kept tail; approximate, see README), the Kiln
# prompt and the sd.cpp arguments.
FAMILIES = {
    "qwen_image": {
        "dit": ["qwen_image_1", "qwen_image_2"], "blocks": [1, 2], "text_tokens": 17,
        "te": ["qwen25_vl_2l"], "vae": "wan21_vae", "clip_type": "qwen_image",
        "sdcpp": lambda f: ["--llm", f["te"][0]],
    },
    "flux": {
        "dit": ["flux_dev_1,1", "flux_dev_2,2"], "blocks": [2, 4], "text_tokens": 256,
        "te": ["clip_l", "t5_xxl_2l"], "vae": "flux_vae", "clip_type": "flux",
        "sdcpp": lambda f: ["--clip_l", f["te"][0], "--t5xxl", f["te"][1], "--guidance", "3.5"],
    },
    "zimage": {
        "dit": ["z_image_1", "z_image_2"], "blocks": [1, 2], "text_tokens": 32,
        "te": ["qwen3_4b_2l"], "vae": "flux_vae", "clip_type": "lumina2",
        "sdcpp": lambda f: ["--llm", f["te"][0]],
    },
}


def kiln_prompt(fam, text, seed, size, steps):
    """An API prompt: loaders, one text encode, KSampler at cfg 1 (the negative is never run), decode."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "dit.safetensors", "weight_dtype": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                                                  "scheduler": "simple", "denoise": 1.0, "model": ["1", 0],
                                                  "positive": ["4", 0], "negative": ["4", 0],
                                                  "latent_image": ["5", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["3", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "cmp"}},
    }
    if len(fam["te"]) == 2:
        p["2"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "te0.safetensors",
                                                             "clip_name2": "te1.safetensors",
                                                             "type": fam["clip_type"], "device": "default"}}
        p["9"] = {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["4", 0]}}
        p["6"]["inputs"]["positive"] = p["6"]["inputs"]["negative"] = ["9", 0]
    else:
        p["2"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "te0.safetensors", "type": fam["clip_type"],
                                                         "device": "default"}}
    return p


def timed_run(cmd, cwd, threads):
    """Runs cmd under /usr/bin/time; returns (stdout + stderr, {rss: peak RSS in GiB, cpu: the process's CPU
    time over wall time x threads, which other programs on the machine pull below 1})."""
    stats = os.path.join(cwd, "stats")
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S %e", "-o", stats] + cmd, cwd=cwd, capture_output=True,
                       text=True)
    if p.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), (p.stdout + p.stderr)[-3000:]))
    rss, user, system, wall = open(stats).read().split()[-4:]
    return p.stdout + p.stderr, {"rss": int(rss) / 2**20, "cpu": (float(user) + float(system)) / float(wall) / threads}


def run_kiln(args, fam, files, size, work):
    models = os.path.join(work, "models")
    for sub, name, path in [("diffusion_models", "dit", files["dit"]), ("vae", "vae", files["vae"])] + \
            [("text_encoders", "te%d" % i, t) for i, t in enumerate(files["te"])]:
        os.makedirs(os.path.join(models, sub), exist_ok=True)
        link = os.path.join(models, sub, name + ".safetensors")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(path, link)
    prompts = []
    for i, (text, seed) in enumerate([(WARM_PROMPT, 1), (PROMPT, 2)]):
        prompts.append(os.path.join(work, "p%d.json" % i))
        with open(prompts[-1], "w") as f:
            json.dump(kiln_prompt(fam, text, seed, size, args.steps), f)
    out, r = timed_run([args.kiln, "run", "--json", "--timings", "--models", models, "--output",
                        os.path.join(work, "out"), "--precision", args.precision] + prompts, work, args.threads)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    timings = [e["data"] for e in events if e["type"] == "timings"]
    nodes = {n["class_type"]: n for n in timings[-1]["nodes"]}
    # --timings resets the kernel's high-water mark at each node, so time's %M is only the peak
    # since the last node began: the events carry the peaks of every node
    rss = max([r["rss"]] + [t["peak_rss_mib"] / 1024 for t in timings])
    return dict(r, rss=rss, step=statistics.median(nodes["KSampler"]["steps"][1:]),
                te=nodes["CLIPTextEncode"]["seconds"], vae=nodes["VAEDecode"]["seconds"])


def run_sdcpp(args, fam, files, size, work):
    cmd = [args.sdcpp, "--diffusion-model", files["dit"], "--vae", files["vae"]] + fam["sdcpp"](files) + \
          ["-p", PROMPT, "-W", str(size), "-H", str(size), "--steps", str(args.steps), "--cfg-scale", "1",
           "--sampling-method", "euler", "-t", str(args.threads), "-s", "2", "-o", os.path.join(work, "sd.png"),
           "--eager-load"]  # by default each model loads inside its first use, so the text encoder's line would hold it
    out, r = timed_run(cmd, work, args.threads)
    # per-step progress: "| i/n - X.XXs/it" (or it/s); step 1 shows no time
    steps = {}
    for i, n, v, unit in re.findall(r"(\d+)/(\d+) - ([0-9.]+)(s/it|it/s)", out):
        if int(n) == args.steps and int(i) >= 2:
            steps[int(i)] = float(v) if unit == "s/it" else 1.0 / float(v)
    with open(os.path.join(work, "sdcpp.log"), "w") as f:  # the last run's log, to read what it did
        f.write(out)
    te = re.findall(r"get_learned_condition completed, taking ([0-9.]+)s", out)
    vae = re.findall(r"decode_first_stage completed, taking ([0-9.]+)s", out)
    if not steps or not te or not vae:
        sys.exit("could not read sd.cpp's timings from its log:\n" + out[-3000:])
    return dict(r, step=statistics.median(steps.values()), te=float(te[-1]), vae=float(vae[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--sdcpp", required=True)
    ap.add_argument("--peak", type=float, required=True, help="the machine's fp32 FMA peak, GFLOP/s")
    ap.add_argument("--dir", required=True, help="where bench/models.sh wrote the files")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument("sizes", type=int, nargs="+")
    args = ap.parse_args()
    fam = FAMILIES[args.family]
    path = lambda n: os.path.join(args.dir, n + ".safetensors")
    work = tempfile.mkdtemp(prefix="kiln-sdcpp-")
    for size in args.sizes:
        runs = {(side, d): [] for side in ("kiln", "sdcpp") for d in range(2)}
        for rep in range(args.reps):
            for d in range(2):
                files = {"dit": path(fam["dit"][d]), "te": [path(t) for t in fam["te"]], "vae": path(fam["vae"])}
                order = [("kiln", run_kiln), ("sdcpp", run_sdcpp)]
                for side, fn in order if (rep + d) % 2 == 0 else order[::-1]:  # alternate who goes first
                    r = fn(args, fam, files, size, work)
                    runs[(side, d)].append(r)
                    print("  rep %d, %-5s %s: step %.2f s, text %.2f s, vae %.2f s, rss %.2f GiB, cpu %.0f%%, "
                          "load %s" % (rep + 1, side, fam["dit"][d], r["step"], r["te"], r["vae"], r["rss"],
                                       100 * r["cpu"], open("/proc/loadavg").read().split()[0]), flush=True)
            report(args, fam, size, runs)  # after every round, so a run cut short still leaves a table


def report(args, fam, size, runs):
    nb = fam["blocks"][1] - fam["blocks"][0]
    tokens = (size // 16) ** 2 + fam["text_tokens"]
    flops = block_flops(args.family, tokens)

    def stat(side, key, d=None):
        vals = [r[key] for dd in ([d] if d is not None else [0, 1]) for r in runs[(side, dd)]]
        return min(vals), statistics.median(vals)

    def block(side):
        a, b = [r["step"] for r in runs[(side, 0)]], [r["step"] for r in runs[(side, 1)]]
        return ((min(b) - min(a)) / nb, (statistics.median(b) - statistics.median(a)) / nb)

    rows = [("DiT step, %s (s)" % fam["dit"][1], stat("kiln", "step", 1), stat("sdcpp", "step", 1)),
            ("DiT per block (s)", block("kiln"), block("sdcpp")),
            ("text encoder (s)", stat("kiln", "te"), stat("sdcpp", "te")),
            ("VAE decode (s)", stat("kiln", "vae"), stat("sdcpp", "vae")),
            ("peak RSS, %s (GiB)" % fam["dit"][1], stat("kiln", "rss", 1), stat("sdcpp", "rss", 1))]
    print("\n== %s at %dx%d: %d runs per side and depth, %d steps, cfg 1, %d threads; min / median" %
          (args.family, size, size, len(runs[("kiln", 0)]), args.steps, args.threads))
    print("| %-30s | %-15s | %-15s | %-13s |" % ("", "Kiln", "sd.cpp", "Kiln / sd.cpp"))
    print("|%s|%s|%s|%s|" % ("-" * 32, "-" * 17, "-" * 17, "-" * 15))
    for name, k, s in rows:
        print("| %-30s | %6.2f / %6.2f | %6.2f / %6.2f | %5.2f / %5.2f |" %
              (name, k[0], k[1], s[0], s[1], k[0] / s[0], k[1] / s[1]))
    kb, sb = block("kiln"), block("sdcpp")
    print("| %-30s | %6.0f%% / %4.0f%% | %6.0f%% / %4.0f%% | %-13s |" %
          ("DiT block, of fp32 peak", 100 * flops / kb[0] / args.peak / 1e9, 100 * flops / kb[1] / args.peak / 1e9,
           100 * flops / sb[0] / args.peak / 1e9, 100 * flops / sb[1] / args.peak / 1e9, ""))
    print("block: %.1f GFLOP (%d tokens), fp32 peak %.1f GFLOP/s" % (flops * 1e-9, tokens, args.peak))
    print("CPU time over wall x %d threads, median of the runs: Kiln %.0f%%, sd.cpp %.0f%% (100%%: the cores were "
          "theirs)" % (args.threads, 100 * stat("kiln", "cpu")[1], 100 * stat("sdcpp", "cpu")[1]))
    print("compute precision: Kiln %s GEMMs on bf16-stored weights; sd.cpp ggml-cpu on the bf16 weights as stored "
          "(activations rounded to bf16, fp32 accumulation)" % args.precision)


if __name__ == "__main__":
    main()
