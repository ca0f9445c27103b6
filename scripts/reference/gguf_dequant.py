#!/usr/bin/env python3
"""Reference dequantization for distill's GGUF reader, recorded with gguf-py (llama.cpp's own
Python package): random blocks of each tensor type and the floats gguf-py decodes them to.

    pip install gguf numpy safetensors
    gguf_dequant.py models/tests/fixtures/gguf-dequant.safetensors
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

rng = np.random.default_rng(7)


def f16(n):
    return (rng.standard_normal(n) * 0.05).astype(np.float16).view(np.uint8)


# Byte offsets of the f16 scale fields inside one block, per type.
SCALES = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
          T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}

out = {}
for qt in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
    block, size = GGML_QUANT_SIZES[qt]
    n_blocks = 3
    if qt == T.F32:
        raw = rng.standard_normal(block * n_blocks).astype(np.float32).view(np.uint8)
    elif qt == T.F16:
        raw = f16(block * n_blocks)
    elif qt == T.BF16:
        raw = (rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = rng.integers(0, 256, size * n_blocks, dtype=np.uint8)
        for b in range(n_blocks):
            for off in SCALES[qt]:
                raw[b * size + off: b * size + off + 2] = f16(1)
    values = dequantize(raw, qt).astype(np.float32).reshape(-1)
    out[f"bytes_{qt.name}"] = raw.copy()
    out[f"values_{qt.name}"] = values
    print(qt.name, raw.shape, values.shape)
save_file(out, sys.argv[1])
