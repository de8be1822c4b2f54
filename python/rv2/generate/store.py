"""The crash-safe dataset store of `rv2 generate`.

Layout of a store folder:

    images/s00000/<image_id>.png   accepted images, at most `shard_size` per shard
    journal.jsonl                  one JSON line per generation attempt (the truth)
    manifest.parquet               accepted images: a valid rv2 dataset manifest
    qc_log.parquet                 every attempt with its QC outputs and verdict
    summary.json, run.json, rv2_meta.json

Write order makes `kill -9` at any moment safe: an image is written to a
temporary name, fsynced and renamed; only then is its attempt appended to the
journal (one write + fsync per batch). On reopening, a torn last journal line
is cut off, temporary files are removed, and image files that no journal line
accepts are deleted (their prompts are regenerated, identically, since seeds
depend only on prompt and attempt). Parquet files are derived from the journal
and replaced atomically. A lock file keeps two runs off the same store.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rv2.data.manifest import conform, sidecar_path, summary_counts, validate
from rv2.data.schema import REQUIRED_COLUMNS
from rv2.errors import UserError
from rv2.files import (
    DiskFullError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    clean_temporaries,
    dumps,
    fsync_dir,
    is_disk_full,
)
from rv2.generate.config import StoreConfig

log = logging.getLogger("rv2.generate.store")

JOURNAL = "journal.jsonl"
MANIFEST = "manifest.parquet"
QC_LOG = "qc_log.parquet"
RUN_INFO = "run.json"
IMAGES = "images"
# What the store keeps in memory of a rejected attempt (accepted ones are kept whole).
LOG_KEYS = ("prompt_id", "attempt", "seed", "image_id", "path", "sex", "race", "age")
# Settings that must not change between a run and its resumption.
RUN_KEYS = ("model_hash", "qc_hash", "steps", "guidance", "height", "width", "base_seed",
            "dtype", "qc_enabled", "qc_convention", "age_tolerance", "image_format", "channels")


class StoreError(UserError):
    """The store folder cannot be used as asked (locked, or made by other settings)."""


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95, compress_level: int = 4) -> bytes:
    """uint8 H x W (gray) or H x W x 3 (RGB) -> PNG (lossless) or JPEG bytes."""
    from PIL import Image

    if img.dtype != np.uint8:
        raise UserError(f"encode_image takes uint8, got {img.dtype}")
    pil = Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=compress_level)
    elif fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=quality)
    else:
        raise UserError(f"unknown image format {fmt!r}; use png or jpeg")
    return buf.getvalue()


class ShardedStore:
    """Images in bounded shard folders + an append-only journal; see the module doc."""

    def __init__(self, root: str | os.PathLike, store_cfg=None, run_info: dict | None = None):
        self.root = Path(root)
        self.cfg = store_cfg or StoreConfig()
        self.run_info = dict(run_info or {})
        self.records: list[dict] = []
        self.accepted: dict[str, dict] = {}
        self.last_attempt: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._journal = None
        self._n_accepted_paths = 0

    @property
    def ext(self) -> str:
        return "png" if self.cfg.image_format == "png" else "jpg"

    # ---------------------------------------------------------------- open / recover
    def open(self) -> "ShardedStore":
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IMAGES).mkdir(exist_ok=True)
        self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"store {self.root} is in use by another rv2 generate process "
                             "(its .lock is held); wait for it or use another --out") from None
        self._check_run_info()
        self._recover()
        # Unbuffered: a failed append (a full disk) leaves nothing behind to flush at close.
        self._journal = open(self.root / JOURNAL, "ab", buffering=0)
        return self

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _check_run_info(self) -> None:
        path = self.root / RUN_INFO
        if path.is_file():
            old = json.loads(path.read_text())
            diff = [f"{k}: store has {old.get(k)!r}, this run {self.run_info.get(k)!r}"
                    for k in RUN_KEYS if k in self.run_info and old.get(k) != self.run_info.get(k)]
            if diff:
                raise StoreError(f"store {self.root} was made with other settings; resuming would "
                                 "mix images from different generators. Use another --out, or the "
                                 "original settings.\n  " + "\n  ".join(diff))
        elif self.run_info:
            atomic_write_text(path, dumps(self.run_info, indent=2))

    def _recover(self) -> None:
        jpath = self.root / JOURNAL
        records: list[dict] = []
        if jpath.is_file():
            data = jpath.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):  # torn last line from a crash mid-append
                log.warning("%s: dropping a torn last line (%d bytes)", jpath, len(data) - cut)
                with open(jpath, "r+b") as f:
                    f.truncate(cut)
                    f.flush()
                    os.fsync(f.fileno())
            for n, line in enumerate(data[:cut].splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise StoreError(f"{jpath}:{n}: unreadable journal line ({exc}); the store "
                                         "was edited by hand?") from exc
        # Keep the first record of each (prompt, attempt): a retried batch after a
        # crash between journal append and nothing else cannot duplicate, but be safe.
        seen, kept, lost = set(), [], []
        for r in records:
            key = (r["prompt_id"], int(r["attempt"]))
            if key in seen:
                continue
            if r.get("qc_pass") and r.get("path") and not (self.root / r["path"]).is_file():
                lost.append(r)  # journaled but its file is gone (deleted by hand): redo it
                continue
            seen.add(key)
            kept.append(r)
        if lost or len(kept) != len(records):
            log.warning("%s: %d accepted image(s) missing on disk, %d duplicate line(s); rewriting "
                        "the journal, those prompts will be regenerated", jpath, len(lost),
                        len(records) - len(kept) - len(lost))
            self._rewrite_journal(kept)
        self.records = [self._compact(r) for r in kept]
        self.accepted = {}
        self.last_attempt = {}
        for r in kept:
            pid = r["prompt_id"]
            self.last_attempt[pid] = max(self.last_attempt.get(pid, -1), int(r["attempt"]))
            if r.get("qc_pass"):
                self.accepted[pid] = r
        # Remove temporaries and images no journal line accepts.
        wanted = {r["path"] for r in self.accepted.values()}
        removed = 0
        for shard in sorted((self.root / IMAGES).iterdir()):
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                rel = f.relative_to(self.root).as_posix()
                if rel not in wanted:
                    f.unlink()
                    removed += 1
        if removed:
            log.warning("%s: removed %d image file(s) written after the last journal entry",
                        self.root, removed)
        self._n_accepted_paths = len(self.accepted)
        clean_temporaries(self.root)  # left by a writer killed mid-write (tables, sidecar, run info)

    def _rewrite_journal(self, records: Sequence[dict]) -> None:
        atomic_write_bytes(self.root / JOURNAL, b"".join(
            dumps(r).encode() + b"\n" for r in records))
        fsync_dir(self.root)

    @staticmethod
    def _compact(r: dict) -> dict:
        """A rejected attempt without its prompt's static fields (memory at 500k prompts)."""
        if r.get("qc_pass"):
            return r
        return {k: v for k, v in r.items() if k in LOG_KEYS or k.startswith("qc_")}

    # ---------------------------------------------------------------- state
    def is_done(self, prompt_id: str, max_attempts: int) -> bool:
        return prompt_id in self.accepted or self.last_attempt.get(prompt_id, -1) + 1 >= max_attempts

    def next_attempt(self, prompt_id: str) -> int:
        return self.last_attempt.get(prompt_id, -1) + 1

    # ---------------------------------------------------------------- writing
    def _next_path(self, image_id: str) -> str:
        shard = self._n_accepted_paths // self.cfg.shard_size
        self._n_accepted_paths += 1
        return f"{IMAGES}/s{shard:05d}/{image_id}.{self.ext}"

    def reserve_path(self, image_id: str) -> str:
        """The path (relative to the store) the next accepted image goes to; its shard
        folder exists. For writers that write the file themselves (`encode`, then a
        durable write), before `append` journals it."""
        rel = self._next_path(image_id)
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        return rel

    def encode(self, img: np.ndarray) -> bytes:
        """An image's file bytes in this store's format."""
        return encode_image(img, self.cfg.image_format, self.cfg.jpeg_quality,
                            self.cfg.png_compress_level)

    def write_image(self, image_id: str, img: np.ndarray) -> str:
        """Write one accepted image durably; returns its path relative to the store."""
        rel = self.reserve_path(image_id)
        final = self.root / rel
        atomic_write_bytes(final, self.encode(img))
        fsync_dir(final.parent)
        return rel

    def append(self, records: Iterable[dict]) -> None:
        """Journal attempts (after their images are on disk): one write, one fsync."""
        records = list(records)
        if not records:
            return
        blob = b"".join(dumps(r).encode() + b"\n" for r in records)
        size = os.fstat(self._journal.fileno()).st_size
        try:
            view = memoryview(blob)
            while view:  # a raw write may be short
                view = view[self._journal.write(view):]
            os.fsync(self._journal.fileno())
        except OSError as exc:
            # Cut the torn lines now (reopening would too); the batch's images, not
            # journaled, are removed on reopening and regenerated identically.
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal.fileno(), size)
            if is_disk_full(exc):
                raise DiskFullError(f"disk full while writing {self.root / JOURNAL}",
                                    self.root / JOURNAL) from exc
            raise
        for r in records:
            self.records.append(self._compact(r))
            pid = r["prompt_id"]
            self.last_attempt[pid] = max(self.last_attempt.get(pid, -1), int(r["attempt"]))
            if r.get("qc_pass"):
                self.accepted[pid] = r

    def write(self, records: Sequence[dict], images_u8: Sequence[np.ndarray | None]) -> list[dict]:
        """The writer stage: write the accepted images of a batch, then journal every attempt.

        `records[i]` is a finished attempt (prompt fields + QC verdict); `images_u8[i]` its
        uint8 image (needed only where `qc_pass`). Returns the records with `path` set."""
        out = []
        for rec, img in zip(records, images_u8):
            rec = dict(rec)
            if rec.get("qc_pass"):
                if img is None:
                    raise ValueError(f"accepted attempt {rec['prompt_id']}#{rec['attempt']} has no image")
                rec["path"] = self.write_image(rec["image_id"], img)
            else:
                rec["path"] = None
            out.append(rec)
        self.append(out)
        return out

    # ---------------------------------------------------------------- derived tables
    def manifest_frame(self):
        """Accepted images as an rv2 dataset manifest (schema columns and dtypes, validated)."""
        import pandas as pd

        rows = sorted(self.accepted.values(), key=lambda r: r["image_id"])
        df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
        df = conform(df)
        validate(df, str(self.root / MANIFEST))
        return df

    def qc_log_frame(self):
        import pandas as pd

        rows = [{k: v for k, v in r.items() if k in LOG_KEYS or k.startswith("qc_")}
                for r in self.records]
        return pd.DataFrame(rows)

    def _atomic_parquet(self, df, name: str) -> Path:
        path = self.root / name
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False)
        return path

    def write_tables(self) -> tuple[Path, Path]:
        """manifest.parquet (+ its sidecar, as `rv2.data.manifest` writes them) and qc_log.parquet."""

        man = self.manifest_frame()
        path = self._atomic_parquet(man, MANIFEST)
        side = {"dataset": "synthetic", "source": "rv2 generate", "counts": summary_counts(man),
                "columns": list(man.columns), "uncertain_policy": None,
                "note": "demographics are the requested (prompt) ones; labels come from the "
                        "prompt's source row; every image passed QC"}
        atomic_write_text(sidecar_path(path), dumps(side, indent=2))
        return path, self._atomic_parquet(self.qc_log_frame(), QC_LOG)
