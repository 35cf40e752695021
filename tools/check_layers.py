#!/usr/bin/env python3
"""Fails when a source file includes a header from a layer above its own,
or names a model family outside pipelines/.

    check_layers.py SOURCE_DIR

Layers, lowest first (README "Layout"): each folder may include its own
headers and those of the folders before it, never one after it. Inside
pipelines/, the shared folders (common, sampling, tokenizers) and the
top-level headers (family.h, fixture.h) are the interface; every other
sub-folder is a model family's own code, included only from pipelines/
itself (the detection table), so that loras/, nodes/ and the layers above
reach models only through pipelines/family.h.
"""
import os
import re
import sys

LAYERS = ["kernels", "pipelines", "loras", "nodes", "graph", "web", "runtime"]
RANK = {name: i for i, name in enumerate(LAYERS)}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/([^"]*)"')
SHARED_PIPELINE_DIRS = {"common", "sampling", "tokenizers"}


def family_header(rest):
    """The family folder a pipelines/ include names, or None."""
    parts = rest.split("/")
    return parts[0] if len(parts) > 1 and parts[0] not in SHARED_PIPELINE_DIRS else None


def main():
    src = sys.argv[1]
    bad = []
    files = 0
    for layer in LAYERS:
        for root, _, names in os.walk(os.path.join(src, layer)):
            for name in names:
                if not name.endswith((".c", ".h", ".cu", ".cuh")):
                    continue
                path = os.path.join(root, name)
                files += 1
                with open(path, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m or m.group(1) not in RANK:
                            continue
                        rel = os.path.relpath(path, src)
                        if RANK[m.group(1)] > RANK[layer]:
                            bad.append(f"{rel}:{lineno}: {layer} includes {m.group(1)}/ ({line.strip()})")
                        elif m.group(1) == "pipelines" and layer != "pipelines" and family_header(m.group(2)):
                            bad.append(f"{rel}:{lineno}: {layer} names the model family "
                                       f"'{family_header(m.group(2))}' ({line.strip()}); use pipelines/family.h")
    for b in bad:
        print("FAIL " + b)
    print(f"{files} files, {len(bad)} bad includes (order: {' -> '.join(LAYERS)}; "
          f"families only through pipelines/family.h)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
