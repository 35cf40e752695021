#!/usr/bin/env python3
"""Every shared example workflow (tests/fixtures/workflows, copied from
shared/workflows) renders with the tiny model set as it is saved: the tiny
files carry the names ComfyUI's templates use, so no file name is edited,
only the size (64x64) and the step count (2), with --set on the UI-format
file. Each PNG is 64x64 (or the input image's size for edits) and its
"workflow" chunk holds the values that were rendered.

    test_shared_workflows.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

A workflow whose nodes this build does not implement (validation answers
missing_node_type) is skipped with the reason printed; any other failure
fails the test.
"""
import json
import os
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kiln_e2e import Checks, of_type, png_texts, run_kiln  # noqa: E402

KILN, SRC, WORK, MODELS = (os.path.abspath(a) for a in sys.argv[1:5])
FIXTURES = os.path.join(SRC, "tests", "fixtures", "workflows")
SIZE, STEPS = 64, 2
check = Checks()


def write_png(path, w, h):
    """A small RGB gradient PNG (LoadImage's input for the edit workflows)."""
    rows = b"".join(b"\0" + bytes(v for x in range(w) for v in (x * 4 % 256, y * 4 % 256, 128)) for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def overrides(api):
    """--set arguments making a workflow small: its latent sizes, steps and edit-image scales."""
    sets = []
    for nid, node in api.items():
        t, inputs = node["class_type"], node["inputs"]
        if t in ("EmptySD3LatentImage", "EmptyLatentImage", "ModelSamplingFlux"):
            sets += ["%s.width=%d" % (nid, SIZE), "%s.height=%d" % (nid, SIZE)]
        if t in ("KSampler", "BasicScheduler", "KSamplerAdvanced") and isinstance(inputs.get("steps"), int):
            sets.append("%s.steps=%d" % (nid, STEPS))
        if t == "ImageScaleToTotalPixels":
            sets.append("%s.megapixels=%s" % (nid, max(SIZE * SIZE / 1e6, 0.01)))  # the node's minimum
    return [a for s in sets for a in ("--set", s)]


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    inp, out = os.path.join(WORK, "input"), os.path.join(WORK, "output")
    os.makedirs(inp)
    names = sorted(f[: -len(".api.json")] for f in os.listdir(FIXTURES) if f.endswith(".api.json"))
    rendered, skipped = 0, []
    for name in names:
        api = json.load(open(os.path.join(FIXTURES, name + ".api.json")))
        for node in api.values():  # the edit workflows' input image
            if node["class_type"] == "LoadImage":
                write_png(os.path.join(inp, node["inputs"]["image"]), SIZE, SIZE)
        ui = os.path.join(FIXTURES, name + ".ui.json")
        path = ui if os.path.exists(ui) else os.path.join(FIXTURES, name + ".api.json")
        rc, ev, err = run_kiln(check, KILN, ["--output", out, "--input", inp, "--seed", "5"] + overrides(api) + [path],
                               WORK, timeout=900)
        errors = [e for e in ev if "node_errors" in e]
        missing = sorted({n["class_type"] for e in errors for n in e["node_errors"].values()
                          if any(x["type"] == "missing_node_type" for x in n["errors"])})
        if rc != 0 and missing:
            skipped.append(name)
            print("SKIP %s: this build does not implement %s" % (name, ", ".join(missing)))
            continue
        done = of_type(ev, "execution_success")
        if not check(rc == 0 and len(done) == 1, "%s renders with the tiny set under its own file names%s"
                     % (name, "" if rc == 0 else ": " + err.strip()[-400:])):
            continue
        rendered += 1
        (image,) = [o["images"][0] for o in done[0]["outputs"].values()]
        png = os.path.join(out, image["subfolder"], image["filename"])
        with open(png, "rb") as f:
            w, h = struct.unpack(">II", f.read(24)[16:24])
        check(not any(n["class_type"] == "EmptySD3LatentImage" for n in api.values()) or (w, h) == (SIZE, SIZE),
              "%s: %dx%d PNG" % (name, w, h))
        if path == ui:  # the workflow chunk shows the rendered values
            texts = png_texts(png)
            graph = json.loads(texts.get("workflow", "{}"))
            seeds = [n["widgets_values"][0] for n in graph.get("nodes", [])
                     if n.get("type") in ("KSampler", "RandomNoise") and n.get("mode", 0) == 0]
            latents = [n["widgets_values"][:2] for n in graph.get("nodes", []) if n.get("type") == "EmptySD3LatentImage"]
            check(all(s == 5 for s in seeds) and all(l == [SIZE, SIZE] for l in latents),
                  "%s: the PNG's workflow chunk holds the rendered seed and size (%s, %s)" % (name, seeds, latents))
    print("%d rendered, %d skipped" % (rendered, len(skipped)))
    check(rendered >= 6, "at least the 6 text-to-image workflows rendered")
    check.exit()


if __name__ == "__main__":
    main()
