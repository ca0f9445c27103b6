"""f32 matrix products at the shapes `distill bench gemm` times, in PyTorch and NumPy.

Usage: python gemm_bench.py SHAPES REPS THREADS
  SHAPES: comma-separated MxKxN ([m, k] @ [k, n]); REPS: repetitions (best kept); THREADS: threads.
Prints one JSON object: GFLOP/s per library and shape, and what each library runs on.

PyTorch's x86 wheels multiply f32 with oneDNN/MKL; NumPy's wheels with OpenBLAS (DYNAMIC_ARCH:
the kernel is chosen at run time by CPU model). Both are the references `distill bench gemm` sets
beside burn-flex's gemm kernels.
"""
import json
import os
import sys
import time

shapes = [tuple(int(x) for x in s.split("x")) for s in sys.argv[1].split(",")]
reps = int(sys.argv[2])
threads = int(sys.argv[3])
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
os.environ.setdefault("OMP_NUM_THREADS", str(threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(threads)
out = {"torch_version": torch.__version__, "numpy_version": np.__version__, "threads": threads,
       "torch_config": torch.__config__.show().splitlines()[:12], "torch": {}, "numpy": {}}
try:
    cfg = np.show_config(mode="dicts")
    out["numpy_blas"] = cfg["Build Dependencies"]["blas"].get("openblas configuration", cfg["Build Dependencies"]["blas"].get("name"))
except Exception as e:  # noqa: BLE001
    out["numpy_blas"] = f"unknown ({e})"


def best(f):
    f()
    t = float("inf")
    for _ in range(reps):
        s = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - s)
    return t


for m, k, n in shapes:
    key = f"{m}x{k}x{n}"
    flop = 2.0 * m * k * n
    a = torch.rand(m, k) * 2 - 1
    b = torch.rand(k, n) * 2 - 1
    out["torch"][key] = flop / best(lambda: torch.mm(a, b)) / 1e9
    an, bn = a.numpy(), b.numpy()
    out["numpy"][key] = flop / best(lambda: an @ bn) / 1e9
print(json.dumps(out))
