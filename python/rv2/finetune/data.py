"""Training pairs for generator fine-tuning: sources, preprocessing, resumable order.

Three sources give the same items (a [-1, 1] 3xRxR image tensor and a prompt):
a prompts table (Parquet/CSV: image_id, path, prompt, prompt_id), an image folder
with `<stem>.txt` prompts, and tar shards in the authors' WebDataset layout
(`<key>.pt_image` = a pickled torch tensor HxW in [0, 1], `<key>.prompt_metadata`
= the prompt as UTF-8, and `<shard>_size.txt` beside each `<shard>.tar`). Shards
are indexed once with the stdlib tarfile and then read by offset, so every source
is random-access and the order below applies to all of them.

Order: an endless stream of per-epoch permutations (`epoch_permutation`). Sample
number p of the run is item `perm_{p // n}[p % n]`; a resumed run simply starts
at the number of samples already consumed, so the data order is fast-forwarded
without reading a single skipped item, whatever the batch size or device count.
"""
from __future__ import annotations

import glob
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rv2.data.imageio import load_image, pad_to_square, resize
from rv2.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")


class TrainDataError(UserError):
    """Training data that cannot be used; the message names the input and the fix."""

# ------------------------------------------------------------------ preprocessing

def preprocess(img01: np.ndarray, resolution: int) -> torch.Tensor:
    """HxW float [0, 1] -> 3xRxR float32 in [-1, 1]: zero-pad to square, bilinear resize.

    As in the reference: pad with zeros (black), resize to the model size, (x - 0.5) / 0.5.
    """

    img = np.asarray(img01, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(-1)
    if img.ndim != 2:
        raise TrainDataError(f"expected a 2-D grayscale image, got shape {img.shape}")
    img = resize(pad_to_square(img, 0.0), resolution)
    t = torch.tensor(img, dtype=torch.float32).clamp_(0, 1).mul_(2).sub_(1)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """CLIP ids, padded to 77 and truncated, as the reference does."""
    return tokenizer(list(prompts), padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


# ------------------------------------------------------------------ sources

@dataclass
class Record:
    key: str
    prompt: str
    path: str | None = None  # image file
    shard: str | None = None  # tar shard holding the pickled tensor
    offset: int = 0
    size: int = 0


class PairDataset(torch.utils.data.Dataset):
    """Random-access (image, prompt) pairs; item i -> dict(pixels, prompt, index)."""

    def __init__(self, records: list[Record], resolution: int, source: str):
        if not records:
            raise TrainDataError(f"no training pairs found in {source}")
        self.records = records
        self.resolution = resolution
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def load01(self, i: int) -> np.ndarray:
        r = self.records[i]
        if r.shard is not None:
            with open(r.shard, "rb") as f:
                f.seek(r.offset)
                data = f.read(r.size)
            return _tensor_from_pickle(data, f"{r.shard}:{r.key}.pt_image")

        return load_image(r.path)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": preprocess(self.load01(i), self.resolution),
                "prompt": self.records[i].prompt, "index": i}

    def keys(self) -> list[str]:
        return [r.key for r in self.records]


def build_dataset(data_cfg) -> PairDataset:
    """The dataset named by a `DataSection`."""
    src = data_cfg.source
    if src == "prompts":
        recs, where = _prompts_records(data_cfg.prompts_table, data_cfg.data_root)
    elif src == "folder":
        recs, where = _folder_records(data_cfg.image_dir, data_cfg.prompt_dir)
    elif src == "wds":
        recs, where = _wds_records(data_cfg.shards)
    else:
        raise TrainDataError(f"data.source must be prompts, folder or wds, got {src!r}")
    return PairDataset(recs, data_cfg.resolution, where)


def _prompts_records(table, root) -> tuple[list[Record], str]:
    import pandas as pd

    if not table:
        raise TrainDataError("data.source=prompts needs data.prompts_table (a Parquet or CSV "
                             "file with image_id, path, prompt, prompt_id)")
    p = Path(table).expanduser()
    if not p.is_file():
        raise TrainDataError(f"prompts table not found: {p} (set data.prompts_table)")
    df = pd.read_csv(p) if p.suffix.lower() in (".csv", ".tsv") else pd.read_parquet(p)
    missing = [c for c in ("image_id", "path", "prompt") if c not in df.columns]
    if missing:
        raise TrainDataError(f"prompts table {p} lacks column(s) {missing}; has {list(df.columns)}")
    base = Path(root).expanduser() if root else p.parent
    recs = []
    ids = df["prompt_id"] if "prompt_id" in df.columns else df["image_id"]
    for img_id, rel, prompt, pid in zip(df["image_id"], df["path"], df["prompt"], ids):
        if not isinstance(prompt, str) or not prompt.strip():
            raise TrainDataError(f"prompts table {p}: empty prompt for image_id {img_id!r}")
        full = Path(rel) if Path(str(rel)).is_absolute() else base / str(rel)
        recs.append(Record(key=f"{img_id}/{pid}", prompt=prompt.strip(), path=str(full)))
    absent = [r.path for r in recs[:1000] if not Path(r.path).is_file()]
    if absent:
        raise TrainDataError(f"prompts table {p}: {len(absent)} of the first {min(1000, len(recs))} "
                             f"images are missing under data root {base}, e.g. {absent[0]} "
                             "(set data.data_root to the folder the `path` column is relative to)")
    return recs, str(p)


def _folder_records(image_dir, prompt_dir) -> tuple[list[Record], str]:
    if not image_dir:
        raise TrainDataError("data.source=folder needs data.image_dir (and optionally "
                             "data.prompt_dir holding <image stem>.txt prompts)")
    idir = Path(image_dir).expanduser()
    pdir = Path(prompt_dir).expanduser() if prompt_dir else idir
    if not idir.is_dir():
        raise TrainDataError(f"image folder not found: {idir}")
    if not pdir.is_dir():
        raise TrainDataError(f"prompt folder not found: {pdir}")
    recs, unpaired = [], []
    for f in sorted(idir.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        txt = pdir / (f.stem + ".txt")
        if not txt.is_file():
            unpaired.append(f.name)
            continue
        prompt = txt.read_text(encoding="utf-8").strip()
        if not prompt:
            raise TrainDataError(f"empty prompt file {txt}")
        recs.append(Record(key=f.stem, prompt=prompt, path=str(f)))
    if unpaired and not recs:
        raise TrainDataError(f"no image in {idir} has a prompt file <stem>.txt in {pdir} "
                             f"(e.g. {unpaired[0]})")
    if unpaired:
        import logging

        logging.getLogger(__name__).warning("%d images in %s have no prompt file; skipped (e.g. %s)",
                                            len(unpaired), idir, unpaired[0])
    return recs, str(idir)


def _expand_shards(patterns) -> list[Path]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for pat in patterns or []:
        hits = sorted(glob.glob(str(Path(pat).expanduser())))
        if not hits:
            raise TrainDataError(f"no shard matches {pat!r} (data.shards takes .tar paths or globs)")
        out.extend(Path(h) for h in hits)
    if not out:
        raise TrainDataError("data.source=wds needs data.shards (tar files or globs)")
    return out


def _wds_records(patterns) -> tuple[list[Record], str]:
    import logging
    import tarfile

    shards = _expand_shards(patterns)
    recs = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tf:  # uncompressed: members are read by offset
                members = tf.getmembers()
        except (tarfile.TarError, OSError) as exc:
            raise TrainDataError(f"cannot read shard {shard}: {exc} (expected an uncompressed "
                                 "tar of <key>.pt_image / <key>.prompt_metadata)") from exc
        groups: dict[str, dict] = {}
        for m in members:
            if not m.isfile():
                continue
            d, base = m.name.rsplit("/", 1) if "/" in m.name else ("", m.name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)  # WebDataset: key up to the first dot
            key = f"{d}/{stem}" if d else stem
            groups.setdefault(key, {})[ext] = m
        n_shard = 0
        for key, parts in groups.items():
            if "pt_image" not in parts or "prompt_metadata" not in parts:
                raise TrainDataError(f"shard {shard}: sample {key!r} lacks "
                                     f"{'pt_image' if 'pt_image' not in parts else 'prompt_metadata'}"
                                     f" (has {sorted(parts)})")
            pm = parts["prompt_metadata"]
            with open(shard, "rb") as f:
                f.seek(pm.offset_data)
                prompt = f.read(pm.size).decode("utf-8").strip()
            im = parts["pt_image"]
            recs.append(Record(key=key, prompt=prompt, shard=str(shard), offset=im.offset_data,
                               size=im.size))
            n_shard += 1
        size_file = Path(str(shard).rsplit(".tar", 1)[0] + "_size.txt")
        if size_file.is_file():
            declared = int(size_file.read_text().split()[0])
            if declared != n_shard:
                logging.getLogger(__name__).warning(
                    "shard %s holds %d samples but %s says %d", shard, n_shard, size_file, declared)
    return recs, ", ".join(str(s) for s in shards[:3]) + (" ..." if len(shards) > 3 else "")


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a torch tensor and nothing else (the shards are data, not code)."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            from torch._utils import _rebuild_tensor_v2

            return _rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda b: torch.load(io.BytesIO(b), weights_only=True)
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only tensors)")


def _tensor_from_pickle(data: bytes, where: str) -> np.ndarray:
    try:
        t = _TensorUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise TrainDataError(f"{where}: not a pickled torch tensor ({exc})") from exc
    if not isinstance(t, torch.Tensor):
        raise TrainDataError(f"{where}: expected a tensor, got {type(t).__name__}")
    a = t.detach().float().squeeze().numpy()
    if a.ndim != 2:
        raise TrainDataError(f"{where}: expected an HxW image tensor, got shape {tuple(t.shape)}")
    return a


def write_wds_shard(path, samples: list[tuple[str, np.ndarray, str]]) -> Path:
    """Write a shard in the authors' layout (used by tests and tools): (key, HxW [0,1], prompt)."""
    import tarfile
    import time

    path = Path(path)
    with tarfile.open(path, "w") as tf:
        for key, img, prompt in samples:
            for ext, payload in (("pt_image", pickle.dumps(torch.as_tensor(img, dtype=torch.float32))),
                                 ("prompt_metadata", prompt.encode("utf-8"))):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(payload), int(time.time())
                tf.addfile(info, io.BytesIO(payload))
    Path(str(path).rsplit(".tar", 1)[0] + "_size.txt").write_text(f"{len(samples)}\n")
    return path


# ------------------------------------------------------------------ order

def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2 ** 63))
    return torch.randperm(n, generator=g)


class StreamSampler(torch.utils.data.Sampler):
    """Batches of item indices for one process, from sample number `start` on, forever.

    Micro-step m covers global samples [start + m*B*W, start + (m+1)*B*W); process r
    takes its B consecutive samples at offset r*B. One process with batch B*W sees
    exactly the samples that W processes with batch B see together.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start = n, batch, seed, start
        self.rank, self.world = rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def item(self, position: int) -> int:
        e = position // self.n
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, epoch_permutation(self.n, self.seed, e))
        return int(self._perm[1][position % self.n])

    def positions(self, micro_step: int) -> list[int]:
        first = self.start + micro_step * self.batch * self.world + self.rank * self.batch
        return list(range(first, first + self.batch))

    def __iter__(self):
        m = 0
        while True:
            yield [self.item(p) for p in self.positions(m)]
            m += 1

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62


class Collate:
    """Stack a batch and tokenize its prompts (in the loader's workers, off the training loop)."""

    def __init__(self, tokenizer, key: str = "pixels"):
        self.tokenizer, self.key = tokenizer, key

    def __call__(self, items: list[dict]) -> dict:
        prompts = [it["prompt"] for it in items]
        return {self.key: torch.stack([it[self.key] for it in items]), "prompt": prompts,
                "input_ids": tokenize(self.tokenizer, prompts),
                "index": torch.tensor([it["index"] for it in items])}


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items from the latent cache: VAE moments (mean and log-variance) instead of pixels."""

    def __init__(self, moments: np.ndarray, prompts: list[str]):
        self.moments, self.prompts = moments, prompts

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, i):
        return {"moments": torch.from_numpy(np.array(self.moments[i], dtype=np.float32)),
                "prompt": self.prompts[i], "index": i}
