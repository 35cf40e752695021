#!/usr/bin/env python3
"""`mpirun -np N kiln run|serve` end to end: sequence-parallel renders of the
bundled workflows on the tiny models, launches that do not match, and ranks
that hang or die.

    test_sp_run.py KILN SOURCE_DIR WORK_DIR MODELS_DIR MPIRUN

1. qwen_image_t2i, flux_schnell_t2i and z_image_turbo_t2i, rendered in one
   `kiln run` per launch (so the followers switch DiTs between prompts):
   - N=2 (--sp auto) twice, N=2 --sp ring twice and N=3, against one process;
   - the tiny Qwen-Image and Z-Image DiTs have 2 heads: N=2 auto is Ulysses and
     writes the one-process PNG byte for byte; the tiny Flux DiT has 1 head, so
     its N=2 auto is ring (and --sp ulysses is refused, naming the heads);
   - ring (and N=3: the heads do not divide by 3) merges partial attention by
     log-sum-exp in fp32, so it is not bit-identical: every pixel value within
     1 of one process and at most 1e-4 of the values different;
   - each launch repeated writes the same bytes (deterministic).
2. Mismatched launches (MPMD `mpirun -np 1 kiln run A : -np 1 kiln run B`):
   another workflow file, another --set, another --sp, another --models folder
   (symlinks to the same files) are refused at start: non-zero exit within 60 s, rank 0's
   stderr saying "launched differently"; the same folder through a symlink to
   it is the same launch and renders the one-process PNG.
3. A hung follower (SIGSTOP mid-render, --sp-timeout 3): rank 0 reports
   "stopped answering" and that later renders run on rank 0 alone, the launch
   ends non-zero within 30 s and leaves no process behind.
4. A dead follower (SIGKILL): mpirun ends the job within 15 s, non-zero, naming
   rank 1; with --enable-recovery rank 0 reports "stopped answering" itself
   within 30 s (mpirun's exit status is not checked: OpenMPI returns 0 after
   rank 0's MPI_Abort there).
5. `kiln serve` under mpirun -np 2: idle longer than --sp-timeout, it still
   renders across both ranks, /view giving the one-process PNG; SIGTERM to
   rank 0 (kiln serve) ends every rank, mpirun exiting 0. With --enable-recovery: a stopped follower fails the next
   prompt (history: error, "stopped answering"), the next prompt renders on
   rank 0 alone, the same PNG, and the server still stops on SIGTERM.
"""
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from kiln_e2e import Checks, png_pixels, render
from kiln_mpi import Launch, alive, within_ring_bound

KILN, SRC, WORK, MODELS, MPIRUN = (os.path.abspath(a) if i < 4 else a for i, a in enumerate(sys.argv[1:6]))
check = Checks()

WORKFLOWS = ["qwen_image_t2i", "flux_schnell_t2i", "z_image_turbo_t2i"]
HEADS = {"qwen_image_t2i": 2, "flux_schnell_t2i": 1, "z_image_turbo_t2i": 2}  # the tiny DiTs'
FILES = [os.path.join(SRC, "workflows", w + ".api.json") for w in WORKFLOWS]
QWEN = FILES[0]
TIMEOUT = 3  # --sp-timeout of the failure cases


def read(path):
    with open(path, "rb") as f:
        return f.read()


def outputs(launch, out):
    """PNG paths of rank 0's execution_success events, in order."""
    paths = []
    for line in launch.lines(0, "stdout"):
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") == "execution_success":
            for o in ev["data"]["outputs"].values():
                image = o["images"][0]
                paths.append(os.path.join(out, image["subfolder"], image["filename"]))
    return paths


def no_crash(launch, what):
    text = launch.text()
    bad = "Sanitizer" in text or "runtime error:" in text or "Segmentation fault" in text
    check(not bad, "%s: no crash or sanitizer report" % what)
    if bad:
        print(text[-6000:])


def mpi_render(label, mpi_args, kiln_args, files, expect=None, timeout=300):
    """`mpirun MPI_ARGS kiln run --json --models MODELS --output WORK/LABEL KILN_ARGS FILES`;
    returns (PNG paths, launch, seconds)."""
    out = os.path.join(WORK, label)
    launch = Launch(MPIRUN, list(mpi_args) + [KILN, "run", "--json", "--models", MODELS, "--output", out] +
                    list(kiln_args) + list(files), WORK)
    try:
        rc = launch.wait(timeout)
        dt = time.time() - launch.started
        no_crash(launch, label)
        pngs = outputs(launch, out)
        if expect is None:
            ok = check(rc == 0 and len(pngs) == len(files), "%s: %d prompts render (exit %s, %.1f s)" %
                       (label, len(files), rc, dt, ))
            if not ok:
                print(launch.text()[-3000:])
        check(launch.wait_gone(10), "%s: no process of the launch left" % label)
    finally:
        launch.cleanup()
    return pngs, launch, dt


# ---- 1. renders across ranks --------------------------------------------------------

def renders(ref):
    ref_px = {w: png_pixels(p)[3] for w, p in zip(WORKFLOWS, ref)}
    runs = {}
    for label, np_, sp in (("np2_auto", 2, "auto"), ("np2_auto_again", 2, "auto"), ("np2_ring", 2, "ring"),
                           ("np2_ring_again", 2, "ring"), ("np3_auto", 3, "auto")):
        pngs, launch, _ = mpi_render(label, ["-np", str(np_)], ["--sp", sp], FILES)
        banner = "kiln: %d ranks (mpi), DiT attention split %s" % (np_, sp)
        check(banner in launch.lines(0, "stderr"), "%s: rank 0 says '%s'" % (label, banner))
        if len(pngs) != len(FILES):
            check.exit()
        runs[label] = pngs
    for i, w in enumerate(WORKFLOWS):
        ulysses = HEADS[w] % 2 == 0
        a = read(runs["np2_auto"][i])
        if ulysses:
            check(a == read(ref[i]), "%s: N=2 auto (Ulysses, %d heads): the one-process PNG byte for byte" %
                  (w, HEADS[w]))
        else:
            ok, how = within_ring_bound(ref_px[w], png_pixels(runs["np2_auto"][i])[3])
            check(ok, "%s: N=2 auto (ring: %d head) within 1 of one process: %s" % (w, HEADS[w], how))
        check(read(runs["np2_auto_again"][i]) == a, "%s: N=2 auto again: the same bytes" % w)
        for label in ("np2_ring", "np3_auto"):
            ok, how = within_ring_bound(ref_px[w], png_pixels(runs[label][i])[3])
            check(ok, "%s: %s within 1 of one process: %s" % (w, label, how))
        check(read(runs["np2_ring_again"][i]) == read(runs["np2_ring"][i]), "%s: N=2 ring again: the same bytes" % w)

    # The tiny Flux DiT's one head cannot be split by heads: refused by name, the launch ends.
    flux = FILES[WORKFLOWS.index("flux_schnell_t2i")]
    _, launch, dt = mpi_render("np2_ulysses_flux", ["-np", "2"], ["--sp", "ulysses"], [flux], expect="fail")
    msg = "Ulysses needs the 1 heads to divide by 2 ranks"
    check(launch.proc.returncode != 0 and any(msg in t for t in launch.lines(0, "stderr")),
          "flux_schnell_t2i: N=2 --sp ulysses refused: '%s' (exit %s, %.1f s)" % (msg, launch.proc.returncode, dt))


# ---- 2. mismatched launches -----------------------------------------------------------

def mismatched(ref):
    other_models = os.path.join(WORK, "models_links")
    for sub in ("diffusion_models", "text_encoders", "vae"):
        os.makedirs(os.path.join(other_models, sub))
        for name in os.listdir(os.path.join(MODELS, sub)):
            os.symlink(os.path.join(MODELS, sub, name), os.path.join(other_models, sub, name))
    same_models = os.path.join(WORK, "models_link")
    os.symlink(MODELS, same_models)

    def mpmd(label, args0, args1, files0, files1):
        out = os.path.join(WORK, label)
        base = [KILN, "run", "--json", "--output", out]
        launch = Launch(MPIRUN, ["-np", "1"] + base + args0 + files0 + [":", "-np", "1"] + base + args1 + files1, WORK)
        try:
            rc = launch.wait(120)
            dt = time.time() - launch.started
            no_crash(launch, label)
            check(launch.wait_gone(10), "%s: no process of the launch left" % label)
        finally:
            launch.cleanup()
        return rc, dt, launch, out

    other = [f for f in FILES if f != QWEN][0]
    for i, (label, args1, files1) in enumerate((("another workflow", [], [other]),
                                 ("another --set", ["--set", "3.seed=5"], [QWEN]),
                                 ("another --sp", ["--sp", "ring"], [QWEN]),
                                 ("another --models folder (links to the same files)",
                                  ["--models", other_models], [QWEN]))):
        rc, dt, launch, _ = mpmd("mpmd_%d" % i, ["--models", MODELS], ["--models", MODELS] + args1,
                                 [QWEN], files1)
        said = [t for t in launch.lines(0, "stderr") if "launched differently" in t]
        check(rc not in (0, None) and dt < 60 and said,
              "mismatch, %s: refused at start, exit %s in %.1f s, rank 0: %s" %
              (label, rc, dt, said[0][:110] + "..." if said else launch.text()[-2000:]))

    rc, dt, launch, out = mpmd("mpmd_same_folder", ["--models", MODELS], ["--models", same_models], [QWEN], [QWEN])
    pngs = outputs(launch, out)
    check(rc == 0 and len(pngs) == 1 and read(pngs[0]) == read(ref[0]),
          "the same --models folder through a symlink: one launch, the one-process PNG (exit %s, %.1f s)" % (rc, dt))


# ---- 3, 4. a follower that hangs or dies -----------------------------------------------

def lost_follower(label, sig, mpi_args=(), limit=30.0):
    """A long render at N=2; sig to rank 1 once rank 0 samples. Returns (launch, exit status, seconds)."""
    out = os.path.join(WORK, label)
    launch = Launch(MPIRUN, list(mpi_args) + ["-np", "2", KILN, "run", "--json", "--models", MODELS, "--output", out,
                                              "--sp-timeout", str(TIMEOUT), "--set", "3.steps=400", QWEN], WORK)
    rc, dt = None, None
    try:
        ranks = launch.wait_ranks(2)
        sampling = launch.wait_line(lambda t: '"type": "progress"' in t, 120, rank=0, stream="stdout")
        if not check(len(ranks) == 2 and sampling, "%s: both ranks up, rank 0 sampling" % label):
            print(launch.text()[-3000:])
            return launch, rc, dt
        os.kill(ranks[1], sig)
        t0 = time.time()
        rc = launch.wait(limit + 30)
        dt = time.time() - t0
        no_crash(launch, label)
        check(launch.wait_gone(10), "%s: no process of the launch left" % label)
    finally:
        launch.cleanup()
    return launch, rc, dt


def hung_and_dead(_ref):
    launch, rc, dt = lost_follower("sigstop", signal.SIGSTOP)
    said = [t for t in launch.lines(0, "stderr") if "stopped answering" in t and "rank 0 alone" in t]
    check(rc not in (0, None) and dt is not None and dt < 30,
          "SIGSTOP rank 1: the launch ends within 30 s, non-zero (exit %s after %s s)" %
          (rc, "%.1f" % dt if dt is not None else "-"))
    check(said, "SIGSTOP rank 1: rank 0 reports it: %s" % (said[-1][-260:] if said else launch.text()[-2000:]))
    check(any("kiln rank 0: ending the launch" in t for t in launch.lines(0, "stderr")),
          "SIGSTOP rank 1: rank 0 says 'kiln rank 0: ending the launch'")

    launch, rc, dt = lost_follower("sigkill", signal.SIGKILL, limit=15)
    noticed = [t for t in launch.untagged() if "rank 1" in t and "signal 9" in t]
    check(rc not in (0, None) and dt is not None and dt < 15 and noticed,
          "SIGKILL rank 1: mpirun ends the job within 15 s, non-zero (exit %s after %s s): %s" %
          (rc, "%.1f" % dt if dt is not None else "-", noticed[0].strip() if noticed else launch.text()[-2000:]))

    launch, rc, dt = lost_follower("sigkill_recovery", signal.SIGKILL, ["--enable-recovery"])
    said = [t for t in launch.lines(0, "stderr") if "stopped answering" in t]
    check(dt is not None and dt < 30 and said,
          "SIGKILL rank 1 under --enable-recovery: rank 0 reports it within 30 s (%s s; exit %s, not checked): %s" %
          ("%.1f" % dt if dt is not None else "-", rc, said[-1][-200:] if said else launch.text()[-2000:]))


# ---- 5. kiln serve ----------------------------------------------------------------------

class MpiServer:
    """`mpirun [MPI_ARGS] -np 2 kiln serve` on a free port in WORK/LABEL."""

    def __init__(self, label, mpi_args=()):
        sys.path.insert(0, os.path.join(SRC, "tests", "server"))
        from kiln_client import free_port
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        root = os.path.join(WORK, label)
        dirs = [os.path.join(root, d) for d in ("output", "input", "temp")]
        for d in dirs:
            os.makedirs(d)
        self.launch = Launch(MPIRUN, list(mpi_args) + [
            "-np", "2", KILN, "serve", "--port", str(self.port), "--sp-timeout", str(TIMEOUT), "--models", MODELS,
            "--output-directory", dirs[0], "--input-directory", dirs[1], "--temp-directory", dirs[2]], root)
        deadline = time.time() + 60
        while True:
            try:
                self.request("GET", "/system_stats", timeout=5)
                break
            except OSError:
                if time.time() > deadline or self.launch.proc.poll() is not None:
                    raise RuntimeError("kiln serve under mpirun did not answer:\n" + self.launch.text()[-3000:])
                time.sleep(0.1)

    def request(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def run(self, prompt, timeout=120):
        """Queues prompt and waits for its history: (entry or None, seconds)."""
        t0 = time.time()
        st, body = self.request("POST", "/prompt", {"prompt": prompt})
        if st != 200:
            return None, 0.0
        pid = json.loads(body)["prompt_id"]
        while time.time() < t0 + timeout:
            st, body = self.request("GET", "/history/" + pid)
            entry = json.loads(body).get(pid) if st == 200 else None
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry, time.time() - t0
            time.sleep(0.1)
        return None, time.time() - t0

    def png(self, entry):
        images = [i for o in (entry or {}).get("outputs", {}).values() for i in o.get("images", [])]
        if len(images) != 1:
            return None
        st, body = self.request("GET", "/view?" + urllib.parse.urlencode(
            {k: images[0][k] for k in ("filename", "subfolder", "type")}))
        return body if st == 200 else None

    def stop(self, sig=signal.SIGTERM, limit=30):
        """sig to mpirun: (exit status or None, seconds)."""
        t0 = time.time()
        self.launch.proc.send_signal(sig)
        rc = self.launch.wait(limit + 10)
        return rc, time.time() - t0


def served(ref):
    prompt = json.load(open(QWEN))
    ref_png = read(ref[0])
    long_prompt = json.loads(json.dumps(prompt))
    long_prompt["3"]["inputs"]["steps"] = 400

    # A healthy server: idle longer than --sp-timeout (followers wait for the leader without a
    # limit between renders), then a render across both ranks; SIGTERM ends every rank.
    srv = MpiServer("serve")
    try:
        banner = "kiln: 2 ranks (mpi), DiT attention split auto"
        ranks = srv.launch.wait_ranks(2)
        check(banner in srv.launch.lines(0, "stderr") and len(ranks) == 2,
              "serve: 2 ranks up, rank 0 says '%s'" % banner)
        time.sleep(TIMEOUT + 1.5)
        entry, dt = srv.run(prompt)
        ok = entry is not None and entry["status"]["status_str"] == "success"
        check(ok and srv.png(entry) == ref_png,
              "serve, N=2 after %.1f s idle: /view gives the one-process PNG byte for byte (%.1f s)" % (TIMEOUT + 1.5, dt))
        # SIGTERM to kiln serve (rank 0): it tells the followers to quit, every rank exits 0.
        # (SIGTERM or SIGINT to mpirun ends the job too, but mpirun then exits 1 whatever the ranks do.)
        t0 = time.time()
        os.kill(ranks[0], signal.SIGTERM)
        rc = srv.launch.wait(40)
        dt = time.time() - t0
        no_crash(srv.launch, "serve")
        check(rc == 0 and dt < 30 and srv.launch.wait_gone(10),
              "serve: SIGTERM to rank 0 ends the launch, exit %s in %.1f s, no process left" % (rc, dt))
    finally:
        srv.launch.cleanup()

    # --enable-recovery: a follower lost while serving.
    srv = MpiServer("serve_recovery", ["--enable-recovery"])
    try:
        ranks = srv.launch.wait_ranks(2)
        entry, dt = srv.run(prompt)
        check(entry is not None and entry["status"]["status_str"] == "success" and srv.png(entry) == ref_png,
              "serve --enable-recovery, N=2: the one-process PNG byte for byte (%.1f s)" % dt)
        os.kill(ranks[1], signal.SIGSTOP)
        entry, dt = srv.run(long_prompt)
        msgs = [m[1].get("exception_message", "") for m in (entry or {}).get("status", {}).get("messages", [])
                if m[0] == "execution_error"]
        check(entry is not None and entry["status"]["status_str"] == "error" and msgs
              and ("stopped answering" in msgs[0] or "rank 0 alone" in msgs[0]) and dt < 30,
              "serve, rank 1 stopped: the 400-step prompt fails in %.1f s, history: %s" %
              (dt, msgs[0].strip()[-220:] if msgs else json.dumps(entry)[:1500]))
        entry, dt = srv.run(prompt)
        check(entry is not None and entry["status"]["status_str"] == "success" and srv.png(entry) == ref_png,
              "serve, rank 1 still stopped: the next prompt renders on rank 0 alone, the one-process PNG (%.1f s)" % dt)
        check(srv.launch.proc.poll() is None and alive(ranks[0]), "serve: rank 0 still serving")
        rc, dt = srv.stop()
        no_crash(srv.launch, "serve_recovery")
        check(rc is not None and dt < 30,
              "serve --enable-recovery: SIGTERM to mpirun ends it within 30 s (exit %s, not checked, in %.1f s)" %
              (rc, dt))
        check(srv.launch.wait_gone(10), "serve --enable-recovery: no process of the launch left (the stopped "
                                        "follower included)")
    finally:
        srv.launch.cleanup()


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    timings = []
    for name, step in (("one process", None), ("renders", renders), ("mismatched", mismatched),
                       ("hung and dead followers", hung_and_dead), ("serve", served)):
        t0 = time.time()
        if step is None:
            ref = render(check, KILN, WORK, FILES, "np1", ["--models", MODELS])
        else:
            step(ref)
        timings.append("%s %.1f s" % (name, time.time() - t0))
    print("timings: " + ", ".join(timings))
    check.exit()


if __name__ == "__main__":
    main()
