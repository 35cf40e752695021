#!/usr/bin/env python3
"""The browser UI end to end: headless Chromium opens `kiln serve`'s page with
?autorun=1 (the page loads the bundled workflow and queues it over
/api/prompt), follows /ws, and shows the result from /api/view; the test
waits for that image to load and saves a screenshot.

    test_browser.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Driven over the DevTools protocol (python3-websocket). Exit 77 (skip) with
the reason when chromium or python3-websocket is missing.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from kiln_client import SKIP, Server, websocket  # noqa: E402

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])


class DevTools:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def eval(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")


def main():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if not browser:
        print("SKIP: chromium is not installed (Debian package: chromium)")
        return SKIP
    if websocket is None:
        print("SKIP: python3-websocket is not installed")
        return SKIP
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    srv = Server(KILN, os.path.join(WORK, "srv"), MODELS)
    profile = tempfile.mkdtemp(prefix="kiln-chromium-")
    chrome = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir=" + profile,
                               "--window-size=1280,900", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ok = False
    try:
        endpoint = None
        deadline = time.time() + 60
        while time.time() < deadline and not endpoint:
            line = chrome.stderr.readline()
            if not line and chrome.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = m.group(1) if m else None
        if not endpoint:
            print("FAIL chromium did not start its DevTools endpoint")
            return 1
        port = re.search(r":(\d+)/", endpoint).group(1)
        pages = json.load(urllib.request.urlopen("http://127.0.0.1:%s/json/list" % port))
        page = next(p for p in pages if p.get("type") == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        dt.call("Page.enable")
        dt.call("Page.navigate", url=srv.base + "/?autorun=1")
        loaded = None
        deadline = time.time() + 90
        while time.time() < deadline:
            loaded = dt.eval("(() => { const i = document.querySelector('#gallery img');"
                             " return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight, i.src] : null; })()")
            if loaded:
                break
            time.sleep(0.25)
        error = dt.eval("document.getElementById('error').textContent")
        shot = dt.call("Page.captureScreenshot", format="png")
        path = os.path.join(WORK, "kiln_ui.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print("screenshot: " + path)
        ok = bool(loaded) and loaded[:2] == [256, 256] and "/api/view?" in loaded[2]
        print(("ok   " if ok else "FAIL ") + "the UI queued the bundled workflow and shows its 256x256 result %s%s"
              % (loaded, " (page error: %s)" % error if error else ""))
    finally:
        chrome.terminate()
        try:
            chrome.wait(20)
        except subprocess.TimeoutExpired:
            chrome.kill()
        shutil.rmtree(profile, ignore_errors=True)
        rc, log = srv.stop()
    if rc != 0:
        print("FAIL server exit status %s\n%s" % (rc, log[-3000:]))
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
