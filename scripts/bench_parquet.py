#!/usr/bin/env python3
"""Parquet sizes of a JSONL file, for `distill bench corpus` (needs pyarrow: pip install pyarrow).

Prints one JSON object: bytes per codec. The JSONL is read with pyarrow's own reader (nested
records become Parquet structs and lists), and written with default row groups.
"""
import json
import os
import sys
import tempfile

import pyarrow
import pyarrow.json as pj
import pyarrow.parquet as pq

table = pj.read_json(sys.argv[1], read_options=pj.ReadOptions(block_size=1 << 26))
out = {"pyarrow": pyarrow.__version__}
for name, kw in [("snappy", dict(compression="snappy")),
                 ("zstd", dict(compression="zstd")),
                 ("zstd-3", dict(compression="zstd", compression_level=3))]:
    fd, path = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, path, **kw)
        out[name] = os.path.getsize(path)
    finally:
        os.remove(path)
print(json.dumps(out))
