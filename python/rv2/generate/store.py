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
and replaced atomically.

Writers. One process owns the journal (`.journal.lock`, exclusive). In the
single-writer mode (`writers="single"`, the in-process executor) it also writes
every image and holds `.lock` exclusively, keeping any other run off the store.
In the multi-writer mode (`writers="multi"`, the Ray executor) many processes
write images, each into its own sub-store `workers/<name>/` (images plus its own
journal, under its own exclusive `workers/<name>/.lock`), and all of them, the
journal owner included, hold `.lock` shared: two drivers, or a single-writer run
beside live workers, cannot start. A sub-store's images count only once the
journal owner has journaled them (`commit`); the journal owner's journal is the
truth for which attempt counts. On opening, the sub-stores of dead writers (their
lock is free) are read: finished attempts the journal lacks are adopted in attempt
order (so a killed driver loses no finished work), and images no journal line
accepts are deleted. The sub-stores of live writers are left alone.
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

from rv2 import _native
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
WORKERS = "workers"          # multi-writer mode: one sub-store per image writer
LOCK = ".lock"               # exclusive: single writer; shared: multi-writer mode
JOURNAL_LOCK = ".journal.lock"
# What the store keeps in memory of a rejected attempt (accepted ones are kept whole).
LOG_KEYS = ("prompt_id", "attempt", "seed", "image_id", "path", "sex", "race", "age")
# Settings that must not change between a run and its resumption.
RUN_KEYS = ("model_hash", "qc_hash", "sampler", "steps", "guidance", "height", "width",
            "base_seed", "dtype", "qc_enabled", "qc_convention", "age_tolerance", "image_format",
            "channels")
# What a store made before a setting existed was made with.
RUN_DEFAULTS = {"sampler": "pndm"}


class StoreError(UserError):
    """The store folder cannot be used as asked (locked, or made by other settings)."""


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95, compress_level: int = 4) -> bytes:
    """uint8 H x W (gray) or H x W x 3 (RGB) -> PNG (lossless; rv2's native encoder where
    built, which writers' threads run without the GIL) or JPEG bytes."""
    if img.dtype != np.uint8:
        raise UserError(f"encode_image takes uint8, got {img.dtype}")
    if fmt == "png":
        return _native.png_encode(img, compress_level)
    from PIL import Image

    pil = Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=quality)
    else:
        raise UserError(f"unknown image format {fmt!r}; use png or jpeg")
    return buf.getvalue()


class _HeldFiles:
    """What an open store holds: its journal and its lock descriptors; close() lets go."""

    _journal = None
    _lock_fds: list = ()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []


class ShardedStore(_HeldFiles):
    """Images in bounded shard folders + an append-only journal; see the module doc."""

    def __init__(self, root: str | os.PathLike, store_cfg=None, run_info: dict | None = None,
                 writers: str = "single"):
        if writers not in ("single", "multi"):
            raise ValueError(f"writers must be 'single' or 'multi', got {writers!r}")
        self.root = Path(root)
        self.writers = writers
        self.cfg = store_cfg or StoreConfig()
        self.run_info = dict(run_info or {})
        self.records: list[dict] = []
        self.accepted: dict[str, dict] = {}
        self.last_attempt: dict[str, int] = {}
        self._lock_fds: list[int] = []
        self._journal = None
        self._n_accepted_paths = 0

    @property
    def ext(self) -> str:
        return "png" if self.cfg.image_format == "png" else "jpg"

    # ---------------------------------------------------------------- open / recover
    def open(self) -> "ShardedStore":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IMAGES).mkdir(exist_ok=True)
        try:
            self._lock_fds = [_flock(self.root / LOCK, shared=self.writers == "multi")]
            self._lock_fds.append(_flock(self.root / JOURNAL_LOCK))
        except BlockingIOError:
            self.close()
            raise StoreError(f"store {self.root} is in use by another rv2 generate process or its "
                             "workers (its lock is held); wait for it or use another --out") from None
        self._check_run_info()
        self._recover()
        # Unbuffered: a failed append (a full disk) leaves nothing behind to flush at close.
        self._journal = open(self.root / JOURNAL, "ab", buffering=0)
        return self

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _check_run_info(self) -> None:
        path = self.root / RUN_INFO
        if path.is_file():
            old = json.loads(path.read_text())
            diff = [f"{k}: store has {old.get(k)!r}, this run {self.run_info.get(k)!r}"
                    for k in RUN_KEYS if k in self.run_info
                    and old.get(k, RUN_DEFAULTS.get(k)) != self.run_info.get(k)]
            if diff:
                raise StoreError(f"store {self.root} was made with other settings; resuming would "
                                 "mix images from different generators. Use another --out, or the "
                                 "original settings.\n  " + "\n  ".join(diff))
        elif self.run_info:
            atomic_write_text(path, dumps(self.run_info, indent=2))

    def _recover(self) -> None:
        jpath = self.root / JOURNAL
        records = read_journal(jpath, repair=True)
        # Keep the first record of each (prompt, attempt), and only accepted ones whose
        # image is on disk (a file deleted by hand: its prompt is regenerated).
        seen, kept, lost = set(), [], []
        for r in records:
            key = (r["prompt_id"], int(r["attempt"]))
            if key in seen:
                continue
            if r.get("qc_pass") and r.get("path") and not (self.root / r["path"]).is_file():
                lost.append(r)
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
            self._note(r)
        self._journal = open(jpath, "ab", buffering=0)
        try:
            dead = self._dead_substores()
            self._adopt(dead)
        finally:
            self._journal.close()
            self._journal = None
        # Remove images no journal line accepts: in images/ and in dead writers' sub-stores.
        wanted = {r["path"] for r in self.accepted.values()}
        removed = 0
        folders = [self.root / IMAGES] + [d / IMAGES for d in dead]
        for folder in folders:
            for shard in sorted(folder.iterdir()) if folder.is_dir() else []:
                if not shard.is_dir():
                    continue
                for f in shard.iterdir():
                    if f.relative_to(self.root).as_posix() not in wanted:
                        f.unlink()
                        removed += 1
        if removed:
            log.warning("%s: removed %d image file(s) that no journal line accepts (written after "
                        "the last journal entry, or by a worker that was lost)", self.root, removed)
        self._n_accepted_paths = sum(1 for r in self.accepted.values()
                                     if str(r.get("path", "")).startswith(IMAGES + "/"))
        clean_temporaries(self.root)  # left by a writer killed mid-write (tables, sidecar, run info)
        for d in dead:
            clean_temporaries(d)
            for shard in (d / IMAGES).iterdir() if (d / IMAGES).is_dir() else []:
                clean_temporaries(shard)

    def _dead_substores(self) -> list[Path]:
        """Sub-store folders whose writer is gone (their lock can be taken)."""
        base = self.root / WORKERS
        dead = []
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if not d.is_dir():
                continue
            try:
                os.close(_flock(d / LOCK))
            except BlockingIOError:
                log.info("%s: its writer is alive; left alone", d)
                continue
            dead.append(d)
        return dead

    def _adopt(self, substores: Sequence[Path]) -> None:
        """Journal the finished attempts of dead writers that the journal lacks, each
        prompt's in attempt order, stopping where the chain breaks."""
        by_prompt: dict[str, dict[int, dict]] = {}
        for d in substores:
            for r in read_journal(d / JOURNAL, repair=False):
                by_prompt.setdefault(r["prompt_id"], {}).setdefault(int(r["attempt"]), r)
        adopted = []
        for pid, attempts in by_prompt.items():
            while pid not in self.accepted:
                r = attempts.get(self.next_attempt(pid))
                if r is None or (r.get("qc_pass") and not (self.root / str(r.get("path"))).is_file()):
                    break
                adopted.append(r)
                self._note(r)
        if adopted:
            log.warning("%s: adopted %d finished attempt(s) from the workers' journals", self.root,
                        len(adopted))
            self._append_lines(adopted)
            self.records.extend(self._compact(r) for r in adopted)

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

    def _note(self, r: dict) -> None:
        pid = r["prompt_id"]
        self.last_attempt[pid] = max(self.last_attempt.get(pid, -1), int(r["attempt"]))
        if r.get("qc_pass"):
            self.accepted[pid] = r

    def _append_lines(self, records: Sequence[dict]) -> None:
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

    def append(self, records: Iterable[dict]) -> None:
        """Journal attempts (after their images are on disk): one write, one fsync."""
        records = list(records)
        if not records:
            return
        self._append_lines(records)
        for r in records:
            self.records.append(self._compact(r))
            self._note(r)

    def commit(self, records: Sequence[dict]) -> list[dict]:
        """Journal attempts that another writer (a sub-store) has already made durable;
        returns those that counted. An attempt counts only as its prompt's next one
        (exactly once: a duplicate or a late result is dropped), and an accepted one only
        if its image is a file inside a sub-store."""
        counted, dropped = [], []
        for r in records:
            pid, att = r["prompt_id"], int(r["attempt"])
            path = str(r.get("path") or "")
            ok = pid not in self.accepted and att == self.next_attempt(pid)
            if ok and r.get("qc_pass"):
                ok = path.startswith(WORKERS + "/") and (self.root / path).is_file()
            if ok:
                counted.append(r)
                self._note(r)   # the next record of the same prompt is checked against this one
            else:
                dropped.append(f"{pid}#{att}")
        if counted:
            self._append_lines(counted)
            self.records.extend(self._compact(r) for r in counted)
        if dropped:
            log.warning("%s: %d result(s) not counted (already journaled or out of order): %s",
                        self.root, len(dropped), dropped[:5])
        return counted

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


def _flock(path: Path, shared: bool = False) -> int:
    """An open fd holding flock on `path` (created); raises BlockingIOError if taken."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


def read_journal(path: Path, repair: bool = False) -> list[dict]:
    """The records of a journal file ([] if absent). A torn last line (a crash mid-append)
    is ignored, and cut from the file when `repair`."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data) and repair:
        log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - cut)
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for n, line in enumerate(data[:cut].splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise StoreError(f"{path}:{n}: unreadable journal line ({exc}); the store "
                                 "was edited by hand?") from exc
    return records


class SubStore(_HeldFiles):
    """One image writer of the multi-writer mode: `<root>/workers/<name>/` with its own
    images and journal. Its `write` is the writer stage of a Ray worker; the paths it
    returns are relative to the store root, ready for the journal owner's `commit`."""

    def __init__(self, root: str | os.PathLike, name: str, store_cfg=None):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad sub-store name {name!r}")
        self.root = Path(root)
        self.name = name
        self.dir = self.root / WORKERS / name
        self.cfg = store_cfg or StoreConfig()
        self._lock_fds: list[int] = []
        self._journal = None
        self._n_images = 0

    @property
    def ext(self) -> str:
        return "png" if self.cfg.image_format == "png" else "jpg"

    def open(self) -> "SubStore":
        if not (self.root / RUN_INFO).is_file():
            raise StoreError(f"{self.root} is not an open rv2 store (no {RUN_INFO}); the driver "
                             "makes it before starting workers, on a file system they share")
        (self.dir / IMAGES).mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fds = [_flock(self.root / LOCK, shared=True), _flock(self.dir / LOCK)]
        except BlockingIOError:
            self.close()
            raise StoreError(f"sub-store {self.dir} is in use (a single-writer run holds the store, "
                             "or another worker has this name)") from None
        done = read_journal(self.dir / JOURNAL, repair=True)
        self._n_images = sum(1 for r in done if r.get("qc_pass"))
        self._journal = open(self.dir / JOURNAL, "ab", buffering=0)
        return self

    def write(self, records: Sequence[dict], images_u8: Sequence[np.ndarray | None]) -> list[dict]:
        """Accepted images first (atomic, fsynced), then one journal line per attempt."""
        out = []
        for rec, img in zip(records, images_u8):
            rec = dict(rec)
            rec["path"] = None
            if rec.get("qc_pass"):
                if img is None:
                    raise ValueError(f"accepted attempt {rec['prompt_id']}#{rec['attempt']} has no image")
                shard = self._n_images // self.cfg.shard_size
                self._n_images += 1
                rel = f"{WORKERS}/{self.name}/{IMAGES}/s{shard:05d}/{rec['image_id']}.{self.ext}"
                final = self.root / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(final, encode_image(img, self.cfg.image_format,
                                                       self.cfg.jpeg_quality,
                                                       self.cfg.png_compress_level))
                rec["path"] = rel
            out.append(rec)
        if out:
            self._journal.write(b"".join(dumps(r).encode() + b"\n" for r in out))
            self._journal.flush()
            os.fsync(self._journal.fileno())
        return out
