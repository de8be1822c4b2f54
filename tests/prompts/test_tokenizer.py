"""The offline SD 2.1 CLIP tokenizer: pinned ids, counts, and agreement with open_clip's own
reference BPE implementation on the real OpenI impressions."""
from __future__ import annotations

import html
import importlib.util

import pytest
from rv2.prompts.tokenizer import clip_tokenizer, count_tokens, count_tokens_batch

PINNED = {
    "86 year old BLACK female. No evidence of acute cardiopulmonary process .":
        [49406, 279, 277, 935, 896, 1449, 3970, 269, 871, 6439, 539, 19734, 6211, 39858, 749,
         856, 4078, 269, 49407],
    "Small left pleural effusion.": [49406, 2442, 1823, 926, 33948, 1490, 9364, 269, 49407],
    "No pneumothorax.": [49406, 871, 28714, 617, 4130, 9203, 269, 49407],
    "Cardiomegaly": [49406, 6211, 3693, 2001, 344, 49407],
    "___ XXXX": [49406, 13530, 22819, 49407],
}


@pytest.mark.parametrize("text", list(PINNED))
def test_pinned_ids_and_counts(text):
    ids = clip_tokenizer()(text)["input_ids"]
    assert ids == PINNED[text]
    assert count_tokens(text) == len(ids)


def test_batch_counts_and_padding():
    texts = list(PINNED)
    assert count_tokens_batch(texts) == [len(v) for v in PINNED.values()]
    long = "no acute process " * 40
    assert count_tokens(long) == 122
    enc = clip_tokenizer()(long, padding="max_length", max_length=77, truncation=True)
    assert len(enc["input_ids"]) == 77 and enc["input_ids"][-1] == 49407


def test_demo_prompt_counts(demo_csv):
    import pandas as pd

    prompts = pd.read_csv(demo_csv)["prompt_variation"].tolist()
    assert count_tokens_batch(prompts) == [19, 17, 19, 20, 12, 21, 19, 17, 17, 17]


def test_matches_open_clip_reference_bpe(openi_reports):
    """open_clip's SimpleTokenizer (pure-Python BPE, the one CLIP was trained with) gives the
    same ids for every distinct OpenI impression."""
    spec = importlib.util.find_spec("open_clip")
    path = next(iter(spec.submodule_search_locations)) + "/tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_oc_tokenizer", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)  # the module alone, not open_clip's model zoo
    ref = mod.SimpleTokenizer()
    texts = sorted({r["impression"] for r in openi_reports if r["impression"]})
    assert len(texts) > 1700
    # open_clip unescapes HTML entities itself (two OpenI impressions hold "&gt;"); the
    # transformers tokenizer of SD does not, and clean_impression unescapes them for prompts.
    ours = clip_tokenizer()([html.unescape(t) for t in texts])["input_ids"]
    sot, eot = ref.encoder["<start_of_text>"], ref.encoder["<end_of_text>"]
    mismatches = [t for t, ids in zip(texts, ours) if [sot] + ref.encode(t) + [eot] != ids]
    assert not mismatches, mismatches[:3]
