#!/usr/bin/env python3
"""The graph editor end to end: headless Chromium (Debian's chromium, driven by
puppeteer-core from web/node_modules) runs tests/browser/editor.cjs against
`kiln serve`: a UI workflow opened by file input, widgets changed, queued, the
image in the gallery, a latent preview frame, the rendered PNG loaded back as
the same graph, an error shown on its node. Screenshots:
WORK_DIR/editor_before.png and WORK_DIR/editor_after.png.

    test_browser.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Exit 77 (skip) with the reason when chromium, node or puppeteer-core is
missing (tools/setup.sh installs all three).
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from kiln_client import SKIP, Server  # noqa: E402

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])


def main():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    node = shutil.which("node")
    web = os.path.join(SRC, "web")
    if not browser:
        print("SKIP: chromium is not installed (Debian package: chromium)")
        return SKIP
    if not node:
        print("SKIP: node is not installed (tools/setup.sh installs nodejs)")
        return SKIP
    for pkg in ("puppeteer-core", "@comfyorg/litegraph"):
        if not os.path.isdir(os.path.join(web, "node_modules", pkg)):
            print("SKIP: npm package %s is not installed in web/node_modules (run tools/setup.sh)" % pkg)
            return SKIP
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    srv = Server(KILN, os.path.join(WORK, "srv"), MODELS)
    try:
        p = subprocess.run([node, os.path.join(SRC, "tests", "browser", "editor.cjs"), srv.base, web, browser,
                            os.path.join(SRC, "workflows", "qwen_image_t2i.ui.json"), WORK],
                           capture_output=True, text=True, timeout=540)
        print(p.stdout)
        if p.returncode and p.stderr:
            print(p.stderr[-3000:])
        print("screenshots: %s, %s" % (os.path.join(WORK, "editor_before.png"), os.path.join(WORK, "editor_after.png")))
        ok = p.returncode == 0
    finally:
        rc, log = srv.stop()
    if rc != 0:
        print("FAIL server exit status %s\n%s" % (rc, log[-3000:]))
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
