#!/usr/bin/env bash
# The project's test command, shared by the README and CI: configure, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build && cmake --build build -j2 && ctest --test-dir build --output-on-failure
