"""The CLIP BPE tokenizer of Stable Diffusion 2.1, built offline.

open_clip ships the CLIP BPE merges (`bpe_simple_vocab_16e6.txt.gz`). The
vocabulary is derived from it exactly as CLIP does: the 256 byte-level
characters, the same with `</w>`, every merged token of the first 48,894
merges, then `<|startoftext|>` and `<|endoftext|>` (49,408 entries). SD 2.x
pads with `!` (id 0) to 77 tokens.
"""
from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

from rv2.errors import UserError

MAX_LENGTH = 77
N_MERGES = 48894  # 49408 - 256 - 256 - 2
BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"


def _bytes_to_unicode() -> list[str]:
    # Printable bytes map to themselves, listed first (so "!" is id 0); the
    # other bytes follow, mapped to code points from 256 on. This order is the
    # CLIP vocabulary's order.
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def bpe_file() -> Path:
    """Path of the CLIP BPE merges file shipped inside open_clip."""
    import importlib.util

    # find_spec locates the package without importing it (importing open_clip
    # pulls in torch and timm: seconds for a 1 MB data file).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the CLIP tokenizer needs open-clip-torch (pip install open-clip-torch), "
                           "whose wheel ships the BPE vocabulary file")
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise UserError(f"open_clip is installed but its BPE file is missing: {path}")
    return path


def write_tokenizer_files(out_dir: str | Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of SD 2.1 into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    base = _bytes_to_unicode()
    vocab_list = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": EOS}))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": BOS,
         "eos_token": EOS, "pad_token": PAD, "unk_token": EOS, "do_lower_case": True}))
    return out


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """A transformers CLIPTokenizer equal to Stable Diffusion 2.1's, without network."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="rv2-clip-tok-") as tmp:
        write_tokenizer_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp)


@functools.lru_cache(maxsize=1)
def _counter():
    # A private copy of the Rust backend: the transformers tokenizer leaves its
    # backend padded/truncated after a call with padding="max_length", which
    # would make every count 77. Same ids as clip_tokenizer()(text) (tested).
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(clip_tokenizer().backend_tokenizer.to_str())
    tk.no_padding()
    tk.no_truncation()
    return tk


def count_tokens(text: str) -> int:
    """Tokens of text including the start and end tokens (the 77 budget counts both)."""
    return len(_counter().encode(text).ids)


def count_tokens_batch(texts: list[str]) -> list[int]:
    """count_tokens of many texts at once (the backend encodes them in parallel)."""
    return [len(e.ids) for e in _counter().encode_batch(list(texts))]
