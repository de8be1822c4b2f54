#!/usr/bin/env python
"""Decode + square crop + resize to 224: images per second per decoder, on real radiographs.

    .venv/bin/python tools/bench_decode.py [--images 240] [--threads 2] [--dir ../shared/data/real-cxr]

Rows: the Pillow/pydicom path of rv2.data.imageio (1 thread, and a thread pool),
torchvision.io (libjpeg/libpng decode + antialiased resize), and DALI with CPU
operators (and "mixed" on a GPU when there is one). Ratios are against the
Pillow path with the same number of threads, measured in the same run. The
file list is the PNG and JPEG files of the folder, repeated to --images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from rv2.data import imageio as iio  # noqa: E402


def pil_one(path, size):
    img = iio.load_image(path)
    return iio.resize(iio.center_crop(img, min(img.shape)), size)


def bench(fn, n_images, repeats=2):
    fn()  # warm-up (pipeline build, caches)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_images / best, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(REPO.parent / "shared" / "data" / "real-cxr"))
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    src = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg"))
    if not src:
        print(f"no PNG/JPEG files in {args.dir}", file=sys.stderr)
        return 1
    files = [src[i % len(src)] for i in range(args.images)]
    n, size, threads = len(files), args.size, args.threads
    print(f"{n} images ({len(src)} distinct real radiographs from {args.dir}), decode + centre "
          f"crop + resize to {size}, {threads} thread(s), os.cpu_count()={os.cpu_count()}")

    rows = []

    def pil_serial():
        for f in files:
            pil_one(f, size)

    pool = ThreadPoolExecutor(threads)

    def pil_pool():
        list(pool.map(lambda f: pil_one(f, size), files))

    rows.append(("pillow (rv2.data.imageio), 1 thread", *bench(pil_serial, n), "pil1"))
    rows.append((f"pillow (rv2.data.imageio), {threads} threads", *bench(pil_pool, n), "base"))

    try:
        import torch
        import torchvision.io as tvio
        import torchvision.transforms.v2.functional as TF

        torch.set_num_threads(threads)

        def tv_one(f):
            t = tvio.decode_image(tvio.read_file(str(f)), mode=tvio.ImageReadMode.GRAY)
            s = min(t.shape[-2:])
            t = TF.center_crop(t, [s, s]).float() / 255
            return TF.resize(t, [size, size], antialias=True)

        def tv_pool():
            list(pool.map(tv_one, files))

        rows.append((f"torchvision.io + resize, {threads} threads", *bench(tv_pool, n), ""))
    except Exception as exc:  # noqa: BLE001
        print(f"torchvision row skipped: {exc}")

    from rv2.data.dali import DaliDecoder, dali_available

    if dali_available():
        dec = DaliDecoder(size, square="crop", device_id=None, batch_size=args.batch,
                          num_threads=threads)
        rows.append((f"DALI cpu, {threads} threads, batch {args.batch}",
                     *bench(lambda: dec.decode_files(files), n), ""))
        try:
            import torch

            if torch.cuda.is_available():
                gdec = DaliDecoder(size, square="crop", device_id=0, batch_size=args.batch,
                                   num_threads=threads)

                def gpu():
                    gdec.decode_torch(files)
                    torch.cuda.synchronize()

                rows.append((f"DALI mixed (GPU), batch {args.batch}", *bench(gpu, n), ""))
        except Exception as exc:  # noqa: BLE001
            print(f"DALI GPU row skipped: {exc}")
    else:
        print("DALI rows skipped: nvidia-dali-cuda130 not installed (pip install 'rv2[dali]')")
    pool.shutdown()

    base = next(r[1] for r in rows if r[3] == "base")
    w = max(len(r[0]) for r in rows)
    print(f"\n{'decoder':<{w}}  {'img/s':>8}  {'seconds':>8}  {'vs pillow ' + str(threads) + 't':>12}")
    for name, ips, secs, _ in rows:
        print(f"{name:<{w}}  {ips:8.1f}  {secs:8.3f}  {ips / base:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
