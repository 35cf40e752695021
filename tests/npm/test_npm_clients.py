#!/usr/bin/env python3
"""The npm ComfyUI clients comfy-ui-client and @saintno/comfyui-sdk run their
documented flows against `kiln serve` (tests/npm/clients.cjs; the tiny
Qwen-Image set, 64x64, 2 steps, latent previews on).

    test_npm_clients.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Exit 77 (skip) with the reason when node or the npm packages (tools/setup.sh
installs them into web/node_modules) are missing.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from kiln_client import SKIP, Server  # noqa: E402

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])


def main():
    node = shutil.which("node")
    web = os.path.join(SRC, "web")
    if not node:
        print("SKIP: node is not installed (tools/setup.sh installs nodejs)")
        return SKIP
    for pkg in ("comfy-ui-client", "@saintno/comfyui-sdk"):
        if not os.path.isdir(os.path.join(web, "node_modules", pkg)):
            print("SKIP: npm package %s is not installed in web/node_modules (run tools/setup.sh)" % pkg)
            return SKIP
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(os.path.join(WORK, "saved"))
    srv = Server(KILN, os.path.join(WORK, "srv"), MODELS, ["--preview-method", "auto"])
    try:
        p = subprocess.run([node, os.path.join(SRC, "tests", "npm", "clients.cjs"), "127.0.0.1:%d" % srv.port, web,
                            os.path.join(SRC, "workflows", "qwen_image_t2i.api.json"), os.path.join(WORK, "saved")],
                           capture_output=True, text=True, timeout=600)
        # pino (comfy-ui-client's logger) writes JSON lines: keep only the checks
        print("\n".join(l for l in p.stdout.splitlines() if not l.startswith("{")))
        if p.returncode and p.stderr:
            print(p.stderr[-3000:])
        ok = p.returncode == 0
    finally:
        rc, log = srv.stop()
    if rc != 0:
        print("FAIL server exit status %s\n%s" % (rc, log[-3000:]))
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
