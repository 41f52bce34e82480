#!/usr/bin/env python
"""The data fingerprint on a Paddy-sized folder: 14k files of 70 KB (about 0.9 GiB), first read, cached, one changed.

    python bench/data_hash.py    # on a generated folder under /tmp (random bytes, not JPEGs), removed after
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

from roadtop.dag.fingerprint import data_fingerprint


def make(d: Path, n: int = 14000, size: int = 70_000):
    """n files of `size` random-ish bytes in the Paddy layout (10 label folders, a quarter in test_images)."""
    buf = os.urandom(1 << 20)
    for i in range(n):
        sub = d / "train_images" / f"l{i % 10}" if i < n * 3 // 4 else d / "test_images"
        sub.mkdir(parents=True, exist_ok=True)
        off = (i * 37) % (len(buf) - size)
        (sub / f"{i}.jpg").write_bytes(buf[off:off + size])


def main():
    """Time the fingerprint: first (every file read), again (only stats), after one same-size rewrite."""
    tmp = Path(tempfile.mkdtemp(prefix="roadtop-hash-"))
    d = tmp / "data"
    make(d)
    files = [f for f in d.rglob("*") if f.is_file()]
    cache = tmp / "checks"
    t = time.time()
    a = data_fingerprint(d, cache)
    first = time.time() - t
    t = time.time()
    b = data_fingerprint(d, cache)
    again = time.time() - t
    f = next(f for f in files if f.suffix == ".jpg")
    f.write_bytes(b"\0" * f.stat().st_size)  # same size, other bytes
    t = time.time()
    c = data_fingerprint(d, cache)
    changed = time.time() - t
    mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} files, {mib:.0f} MiB: first {first:.2f}s, cached {again:.2f}s, one file changed "
          f"{changed:.2f}s (fingerprint kept: {a == b}, then moved: {a != c})")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
