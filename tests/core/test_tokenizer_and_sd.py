"""The offline CLIP tokenizer and the SD component factory the later stages build on."""
from rv2.models import sd
from rv2.prompts.tokenizer import clip_tokenizer, count_tokens
from rv2.testing.sd import tiny_components


def test_tokenizer_known_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True)
    assert len(padded["input_ids"]) == 77 and padded["input_ids"][7:] == [0] * 70
    assert count_tokens("a photo of a cat") == 7


def test_missing_model_folder_is_named(tmp_path):
    import pytest

    with pytest.raises(sd.MissingComponentError, match="not found"):
        sd.check_model_dir(tmp_path / "nope")
    (tmp_path / "m" / "unet").mkdir(parents=True)
    with pytest.raises(sd.MissingComponentError) as err:
        sd.check_model_dir(tmp_path / "m")
    msg = str(err.value)
    assert "model_index.json" in msg and "vae/" in msg and "unet/config.json" in msg


def test_tiny_components_save_and_load(tmp_path):
    import torch

    comps = tiny_components(seed=0)
    sd.save_pipeline(comps, tmp_path / "pipe")
    again = sd.load_components(tmp_path / "pipe")
    for name in ("unet", "vae", "text_encoder"):
        a = dict(getattr(comps, name).state_dict())
        b = dict(getattr(again, name).state_dict())
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer("a photo of a cat")["input_ids"][:3] == [49406, 320, 1125]
    assert again.scheduler.config.skip_prk_steps and again.scheduler.config.steps_offset == 1
