"""Helpers for the tests that launch kiln under mpirun (test_sp_run.py,
test_sp_netns.py), standard library only.

- Launch: one `mpirun --tag-output ...` whose merged output is read by a
  thread, line by line, each line split into (rank, stream, text) when
  mpirun tagged it. Every process of the launch (mpirun, its orteds, the
  ranks) carries KN_E2E_LAUNCH=<token> in its environment, so the test finds
  the ranks (OMPI_COMM_WORLD_RANK) and, in cleanup(), kills exactly the
  processes it started, nothing else. Under an ASan build ctest's
  LSAN_OPTIONS suppress OpenMPI's own leaks (tests/lsan_mpi.supp).
- alive: a pid that runs (a zombie has ended).
- pixel_diff / within_ring_bound: how far a ring render is from one process.
"""
import os
import re
import signal
import subprocess
import threading
import time
import uuid

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMP_NUM_THREADS": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}

TAG = re.compile(r"^\[(\d+),(\d+)\]<(stdout|stderr|stddiag)>:(.*)$")


def _environ(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    """The process exists and has not ended (zombies and dead tasks have)."""
    return _state(pid) not in (None, "Z", "X", "x")


class Launch:
    """`[PREFIX...] mpirun --tag-output ARGS`, output collected (prefix: e.g. `ip netns exec NS`)."""

    def __init__(self, mpirun, args, cwd, env=None, prefix=()):
        self.token = "%d-%s" % (os.getpid(), uuid.uuid4().hex[:12])
        e = dict(os.environ)
        e.update(MPI_ENV)
        e.update(env or {})
        e["KN_E2E_LAUNCH"] = self.token
        self.argv = list(prefix) + [mpirun, "--tag-output"] + list(args)
        self.started = time.time()
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._lines = []  # (time, rank or None, stream or None, text)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            m = TAG.match(line)
            item = (time.time(),) + ((int(m.group(2)), m.group(3), m.group(4)) if m else (None, None, line))
            with self._cond:
                self._lines.append(item)
                self._cond.notify_all()

    # ---- output ----
    def lines(self, rank=None, stream=None):
        """Texts of the lines of a rank (None: any, untagged included) and stream."""
        with self._cond:
            return [t for _, r, s, t in self._lines
                    if (rank is None or r == rank) and (stream is None or s == stream)]

    def untagged(self):
        with self._cond:
            return [t for _, r, _, t in self._lines if r is None]

    def text(self):
        with self._cond:
            return "\n".join(("[%s,%s] " % (r, s) if r is not None else "") + t for _, r, s, t in self._lines)

    def wait_line(self, pred, timeout, rank=None, stream=None):
        """Waits until a line of that rank and stream satisfies pred; returns it (None on timeout or exit)."""
        deadline = time.time() + timeout
        seen = 0
        with self._cond:
            while True:
                for _, r, s, t in self._lines[seen:]:
                    if (rank is None or r == rank) and (stream is None or s == stream) and pred(t):
                        return t
                seen = len(self._lines)
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    # ---- processes ----
    def wait(self, timeout):
        """mpirun's exit status, or None when it still runs after timeout s."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(10)
        return rc

    def processes(self):
        """{pid: environ lines} of the live processes of this launch (mpirun included)."""
        mark = ("KN_E2E_LAUNCH=" + self.token).encode()
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            env = _environ(int(name))
            if mark in env and alive(int(name)):
                out[int(name)] = env
        return out

    def ranks(self):
        """{MPI rank: pid} of the live ranks of this launch."""
        out = {}
        for pid, env in self.processes().items():
            for kv in env:
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    out[int(kv.split(b"=", 1)[1])] = pid
        return out

    def wait_ranks(self, n, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.ranks()
            if len(r) >= n:
                return r
            time.sleep(0.05)
        return self.ranks()

    def wait_gone(self, timeout):
        """True once no process of the launch is left (within timeout s)."""
        deadline = time.time() + timeout
        while self.processes():
            if time.time() > deadline:
                return False
            time.sleep(0.1)
        return True

    def cleanup(self):
        """SIGKILLs whatever of the launch is left (a stopped process dies of SIGKILL too)."""
        for _ in range(3):
            left = self.processes()
            if not left and self.proc.poll() is not None:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if self.proc.poll() is None:
                try:
                    self.proc.kill()
                except OSError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)
        self._reader.join(5)


def pixel_diff(a, b):
    """(values that differ, largest difference) between two renders' pixel bytes of one size."""
    n, worst = 0, 0
    for x, y in zip(a, b):
        if x != y:
            n += 1
            worst = max(worst, abs(x - y))
    return n, worst + abs(len(a) - len(b)) * 256


# Ring attention merges partial outputs by their log-sum-exp in fp32, so it cannot
# be bit-identical to one process: a few 8-bit values move by exactly 1.
RING_MAX_FRACTION = 1e-4


def within_ring_bound(ref, px):
    """(ok, description): every value within 1 of ref, at most RING_MAX_FRACTION of them different."""
    n, worst = pixel_diff(ref, px)
    ok = len(ref) == len(px) and worst <= 1 and n <= RING_MAX_FRACTION * len(ref)
    return ok, "%d of %d values differ (bound %d), by at most %d" % (n, len(ref), int(RING_MAX_FRACTION * len(ref)),
                                                                     worst)
