#!/usr/bin/env python3
"""Fails when a source file includes a header from a layer above its own.

    check_layers.py SOURCE_DIR

Layers, lowest first (README "Layout"): each folder may include its own
headers and those of the folders before it, never one after it.
"""
import os
import re
import sys

LAYERS = ["kernels", "pipelines", "loras", "nodes", "graph", "web", "runtime"]
RANK = {name: i for i, name in enumerate(LAYERS)}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/')


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
                        if m and m.group(1) in RANK and RANK[m.group(1)] > RANK[layer]:
                            rel = os.path.relpath(path, src)
                            bad.append(f"{rel}:{lineno}: {layer} includes {m.group(1)}/ ({line.strip()})")
    for b in bad:
        print("FAIL " + b)
    print(f"{files} files, {len(bad)} upward includes (order: {' -> '.join(LAYERS)})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
