"""Shared helpers for the `kiln serve` tests: start a server on a free port
with its own folders, and talk to it the way ComfyUI clients do (urllib for
HTTP, websocket-client for /ws)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import websocket  # Debian python3-websocket
except ImportError:  # a non-Debian python3 first on PATH: the package is pure Python
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import websocket
    except ImportError:
        websocket = None

SKIP = 77  # ctest SKIP_RETURN_CODE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kiln serve` in WORK/{input,output,temp}; stop() returns its stderr."""

    def __init__(self, kiln, work, models, extra_args=()):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.dirs = {k: os.path.join(work, k) for k in ("input", "output", "temp")}
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        self.log = open(os.path.join(work, "server.log"), "w+")
        self.proc = subprocess.Popen(
            [kiln, "serve", "--port", str(self.port), "--models", models,
             "--output-directory", self.dirs["output"], "--input-directory", self.dirs["input"],
             "--temp-directory", self.dirs["temp"]] + list(extra_args),
            cwd=work, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kiln serve exited: " + self.output())
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("kiln serve did not answer: " + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.output()

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, body bytes); HTTP errors are returned, not raised."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path):
        return self.request("GET", path)

    def get_json(self, path):
        st, body = self.get(path)
        return st, json.loads(body) if body else None

    def post_json(self, path, obj):
        st, body = self.request("POST", path, obj)
        try:
            return st, json.loads(body) if body else None
        except ValueError:
            return st, body

    def ws(self, client_id):
        return websocket.create_connection("ws://127.0.0.1:%d/ws?clientId=%s" % (self.port, client_id), timeout=120)

    def view(self, image):
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                    "type": image["type"]})
        return self.get("/view?" + q)

    def upload(self, name, data, subfolder=None, overwrite=None, type_=None, boundary="kilnboundary42"):
        parts = []
        for field, value in (("subfolder", subfolder), ("overwrite", overwrite), ("type", type_)):
            if value is not None:
                parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                             % (boundary.encode(), field.encode(), value.encode()))
        parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"%s\"\r\n"
                     b"Content-Type: image/png\r\n\r\n" % (boundary.encode(), name.encode()) + data + b"\r\n")
        body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
        st, out = self.request("POST", "/upload/image", body,
                               {"Content-Type": "multipart/form-data; boundary=" + boundary})
        try:
            return st, json.loads(out)
        except ValueError:
            return st, out


def follow(ws, prompt_id, timeout=120):
    """Messages of one run, up to the `executing` {node: null} marker."""
    msgs, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ws.settimeout(max(1, deadline - time.time()))
        m = ws.recv()
        if isinstance(m, bytes):
            continue
        m = json.loads(m)
        msgs.append(m)
        d = m.get("data", {})
        if m["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
            return msgs
    raise TimeoutError("no end marker for " + prompt_id)


def wait_for(ws, pred, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ws.settimeout(max(1, deadline - time.time()))
        m = ws.recv()
        if isinstance(m, bytes):
            continue
        m = json.loads(m)
        if pred(m):
            return m
    raise TimeoutError("message not seen")
