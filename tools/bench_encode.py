#!/usr/bin/env python
"""PNG encoding of generated images: rv2's native encoder against Pillow's, on real radiographs.

    .venv/bin/python tools/bench_encode.py [--images 48] [--size 512] [--level 4] [--threads 2]
                                           [--dir ../shared/data/real-cxr]

What the store's writers do for every accepted image (`rv2.generate.store.encode_image`):
uint8 grayscale in, PNG bytes out, at the store's compression level. Rows: Pillow and
`rv2._C.png_encode`, on one thread and on a pool of --threads (the write stage's
threads), with images per second, the ratio to Pillow on as many threads in the same
run, and the file size against Pillow's. The images are the folder's PNG and JPEG
radiographs as grayscale at --size x --size, repeated to --images; every native file is
decoded back and checked equal to its pixels.

A second table times the step before it, float images in [0, 1] to uint8
(`rv2._C.to_uint8`, clamp and round half to even, NaN -> 0) against its numpy twin, on
the same radiographs as floats, with the outputs checked equal.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from rv2 import _native


def load_images(folder: Path, size: int, n: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no PNG or JPEG files in {folder}")
    base = [np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR)) for p in files]
    return [base[i % len(base)] for i in range(n)]


def rate(encode, images, threads: int, repeats: int = 3) -> tuple[float, list[bytes]]:
    """Best images/s over `repeats` runs after a warm-up, and the last run's files."""
    out: list[bytes] = []

    def run():
        nonlocal out
        if threads == 1:
            out = [encode(im) for im in images]
        else:
            with ThreadPoolExecutor(threads) as pool:
                out = list(pool.map(encode, images))

    run()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return len(images) / best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--level", type=int, default=4, help="zlib level (the store's png_compress_level)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=REPO.parent / "shared" / "data" / "real-cxr")
    args = ap.parse_args()
    if not _native.features()["png_encode"]:
        raise SystemExit(f"rv2._C has no png_encode (built without zlib, or absent: {_native.NATIVE_ERROR})")
    from PIL import Image

    images = load_images(args.dir, args.size, args.images)
    C = _native.native_module()
    encoders = {"Pillow": lambda im: _native.png_encode_py(im, args.level),
                "rv2 native": lambda im: C.png_encode(im, args.level)}
    rows = []
    for threads in sorted({1, args.threads}):
        base = None
        for name, enc in encoders.items():
            r, files = rate(enc, images, threads)
            size = sum(len(f) for f in files) / len(files)
            if name == "rv2 native":
                for im, f in zip(images, files):
                    assert np.array_equal(np.asarray(Image.open(io.BytesIO(f))), im), "native PNG decodes wrong"
            base = base or (r, size)
            rows.append((name, threads, r, r / base[0], size / 1024, size / base[1]))
    print(f"\nPNG encode, {args.images} radiographs at {args.size}x{args.size} gray, zlib level {args.level}\n")
    print("| encoder | threads | images/s | vs Pillow | mean KiB | size vs Pillow |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, threads, r, ratio, kib, sratio in rows:
        print(f"| {name} | {threads} | {r:.1f} | {ratio:.2f}x | {kib:.1f} | {sratio:.3f} |")

    floats = [im.astype(np.float32) / np.float32(255.0) for im in images]
    for f, im in zip(floats, images):   # the float -> uint8 round trip gives the pixels back
        assert np.array_equal(C.to_uint8(f), im) and np.array_equal(_native.to_uint8_py(f), im)
    twin, _ = rate(_native.to_uint8_py, floats, 1)
    native, _ = rate(C.to_uint8, floats, 1)
    print(f"\nfloat -> uint8, the same {args.images} images, one call per image\n")
    print("| conversion | images/s | us per image | vs numpy |\n|---|---:|---:|---:|")
    for name, r in (("numpy twin (clip, round)", twin), ("rv2._C.to_uint8", native)):
        print(f"| {name} | {r:.0f} | {1e6 / r:.0f} | {r / twin:.2f}x |")


if __name__ == "__main__":
    main()
