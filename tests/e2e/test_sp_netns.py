#!/usr/bin/env python3
"""`mpirun -np 2 kiln run` across two "machines": two network namespaces joined
by a veth pair, OpenMPI over TCP between them and nothing else.

    test_sp_netns.py KILN SOURCE_DIR WORK_DIR MODELS_DIR MPIRUN

- Namespaces knsp<pid>a (10.77.0.1/24) and knsp<pid>b (10.77.0.2/24), one veth
  pair between them; mpirun runs in the first with a hostfile of the two
  addresses (slots=1 each) and starts the second's orted through an rsh agent
  that runs the command in the namespace owning the host address (what ssh
  would do on a real second machine). --mca pml ob1, btl tcp,self, TCP and the
  out-of-band channel limited to 10.77.0.0/24 (the veth addresses: each
  namespace's interface has its own name, so the subnet names both).
- qwen_image_t2i and z_image_turbo_t2i (2 heads: Ulysses at N=2) render the
  same PNG bytes as one process; rank 0 ran in the first namespace, rank 1 in
  the second; the veth carried at least the DiT data rank 1 must exchange
  (half of every forward's output tokens each way), the loopbacks less than
  that (nothing went between the ranks through them).
- The namespaces, the veth and every process of the launch are removed in the
  end, whatever happened (stale namespaces of a killed earlier run of this test
  are removed at start).
Exit 77 (skip), saying why, without root, `ip`, network namespaces or veth.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from kiln_e2e import Checks, render
from kiln_mpi import Launch

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
MPIRUN = sys.argv[5] if len(sys.argv) > 5 else "mpirun"
SKIP = 77
check = Checks()

WORKFLOWS = ["qwen_image_t2i", "z_image_turbo_t2i"]
FILES = [os.path.join(SRC, "workflows", w + ".api.json") for w in WORKFLOWS]
PREFIX = "knsp"
NS = ["%s%da" % (PREFIX, os.getpid()), "%s%db" % (PREFIX, os.getpid())]
VETH = NS  # interface names (<= 15 characters), one in each namespace
IPS = ["10.77.0.1", "10.77.0.2"]
SUBNET = "10.77.0.0/24"


def ip(*args, check_rc=True):
    p = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=30)
    if check_rc and p.returncode:
        raise RuntimeError("ip %s: %s" % (" ".join(args), p.stderr.strip()))
    return p


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


def ns_inode(ns):
    try:
        return os.stat("/run/netns/" + ns).st_ino
    except OSError:
        return None


def net_inode(pid):
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino
    except OSError:
        return None


def kill_inside(inodes):
    """SIGKILLs every process in these (this test's) namespaces."""
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and net_inode(int(name)) in inodes:
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


def remove(names):
    inodes = {i for i in map(ns_inode, names) if i}
    for _ in range(3):
        kill_inside(inodes)
        time.sleep(0.1)
    for ns in names:
        if ns_inode(ns):
            ip("netns", "del", ns, check_rc=False)  # the veth goes with its namespace


def remove_stale():
    """Namespaces of this test whose process is gone (a run killed before its cleanup)."""
    p = ip("netns", "list", check_rc=False)
    stale = []
    for line in p.stdout.splitlines():
        m = re.match(r"^(%s(\d+)[ab])\b" % PREFIX, line)
        if m and int(m.group(2)) != os.getpid() and not os.path.exists("/proc/" + m.group(2)):
            stale.append(m.group(1))
    if stale:
        print("removing stale namespaces of an earlier run: " + " ".join(stale))
        remove(stale)


def stats(ns, dev):
    """(rx bytes, tx bytes) of an interface in a namespace."""
    s = json.loads(ip("-n", ns, "-s", "-j", "link", "show", "dev", dev).stdout)[0]["stats64"]
    return s["rx"]["bytes"], s["tx"]["bytes"]


def setup():
    if os.geteuid() != 0:
        skip("network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
    if not shutil.which("ip"):
        skip("no `ip` (iproute2)")
    if not shutil.which(MPIRUN):
        skip("no %s" % MPIRUN)
    remove_stale()
    p = ip("netns", "add", NS[0], check_rc=False)
    if p.returncode:
        skip("ip netns add: " + p.stderr.strip())
    ip("netns", "add", NS[1])
    p = ip("link", "add", VETH[0], "netns", NS[0], "type", "veth", "peer", "name", VETH[1], "netns", NS[1],
           check_rc=False)
    if p.returncode:
        skip("no veth pair: " + p.stderr.strip())
    for ns, dev, addr in zip(NS, VETH, IPS):
        ip("-n", ns, "addr", "add", addr + "/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "link", "set", "lo", "up")


def payload():
    """Bytes rank 1 must receive and send at least: half the image tokens of every DiT
    forward's output (256x256: a 16x32x32 fp32 latent), one forward per step, two with cfg."""
    total = 0
    for f in FILES:
        prompt = json.load(open(f))
        (ks,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler"]
        (lat,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "EmptySD3LatentImage"]
        latent = 16 * (lat["width"] // 8) * (lat["height"] // 8) * 4
        total += ks["steps"] * (2 if ks["cfg"] != 1 else 1) * latent // 2
    return total


def run():
    ref = render(check, KILN, WORK, FILES, "np1", ["--models", MODELS])

    agent = os.path.join(WORK, "netns_rsh.sh")
    with open(agent, "w") as f:
        f.write("#!/bin/sh\n"
                "# OpenMPI's rsh agent: $1 the host, the rest the command a remote shell would run.\n"
                "host=$1; shift\n"
                "case $host in\n" +
                "".join("  %s) ns=%s ;;\n" % (a, n) for a, n in zip(IPS, NS)) +
                "  *) echo \"netns_rsh.sh: unknown host $host\" >&2; exit 255 ;;\n"
                "esac\n"
                "exec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n")
    os.chmod(agent, 0o755)
    hostfile = os.path.join(WORK, "hostfile")
    with open(hostfile, "w") as f:
        f.write("".join("%s slots=1\n" % a for a in IPS))

    before = {(ns, dev): stats(ns, dev) for ns, dev in zip(NS, VETH)}
    before.update({(ns, "lo"): stats(ns, "lo") for ns in NS})
    out = os.path.join(WORK, "np2")
    mpi = ["--hostfile", hostfile, "-np", "2", "--mca", "plm_rsh_agent", agent, "--mca", "pml", "ob1",
           "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", SUBNET, "--mca", "oob_tcp_if_include", SUBNET]
    launch = Launch(MPIRUN, mpi + [KILN, "run", "--json", "--models", MODELS, "--output", out] + FILES, WORK,
                    prefix=["ip", "netns", "exec", NS[0]])
    try:
        ranks = launch.wait_ranks(2, timeout=60)
        where = {r: net_inode(pid) for r, pid in ranks.items()}
        rc = launch.wait(300)
        dt = time.time() - launch.started
        text = launch.text()
        if not check(rc == 0, "N=2 across the namespaces: exit %s in %.1f s" % (rc, dt)):
            print(text[-4000:])
        check("Sanitizer" not in text and "runtime error:" not in text, "no crash or sanitizer report")
        check(where.get(0) == ns_inode(NS[0]) and where.get(1) == ns_inode(NS[1]),
              "rank 0 ran in %s, rank 1 in %s" % tuple(NS))
        pngs = []
        for line in launch.lines(0, "stdout"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "execution_success":
                for o in ev["data"]["outputs"].values():
                    pngs.append(os.path.join(out, o["images"][0]["subfolder"], o["images"][0]["filename"]))
        check(len(pngs) == len(FILES), "%d prompts render" % len(FILES))
        for w, a, b in zip(WORKFLOWS, ref, pngs):
            check(open(a, "rb").read() == open(b, "rb").read(), "%s: N=2 over TCP: the one-process PNG byte for byte" % w)
        check(launch.wait_gone(10), "no process of the launch left")
    finally:
        launch.cleanup()

    after = {k: stats(*k) for k in before}
    need = payload()
    for ns, dev in zip(NS, VETH):
        rx, tx = (after[(ns, dev)][i] - before[(ns, dev)][i] for i in range(2))
        check(rx >= need and tx >= need, "veth %s: %d bytes in, %d out (at least %d each way)" % (dev, rx, tx, need))
        rx, tx = (after[(ns, "lo")][i] - before[(ns, "lo")][i] for i in range(2))
        check(rx < need and tx < need, "%s's loopback: %d bytes in, %d out (less than %d)" % (ns, rx, tx, need))


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)

    def stop(sig, _frame):
        raise SystemExit("stopped by signal %d" % sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        setup()
        run()
    finally:
        made = [n for n in NS if ns_inode(n)]
        remove(NS)
        left = [n for n in NS if ns_inode(n)]
        if made:
            check(not left, "namespaces and veth removed %s" % (left or ""))
    check.exit()


if __name__ == "__main__":
    main()
