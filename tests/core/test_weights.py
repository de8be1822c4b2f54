import pytest
from rv2.weights import MissingWeightsError, find_weights, locate, weight_dirs


def test_missing_weights_error_names_files_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RV2_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError) as err:
        find_weights(["race", "age"], dirs=[tmp_path / "mine"])
    msg = str(err.value)
    assert "resnet_race_detection_val-loss_0.157_mimic_public.pt" in msg
    assert "senet154" in msg
    assert str(tmp_path / "mine") in msg
    assert ".torchxrayvision/models_data" in msg


def test_found_in_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "sex_model_chexpert_resnet_all.ckpt").write_bytes(b"x")
    monkeypatch.setenv("RV2_WEIGHTS_DIR", f"{b}")
    assert weight_dirs([a])[:2] == [a, b]
    assert find_weights(["sex"], dirs=[a])["sex"] == a / "sex_model_chexpert_resnet_all.ckpt"
    assert locate("sex") == b / "sex_model_chexpert_resnet_all.ckpt"
    # folders need their marker file
    (a / "roentgen-v2").mkdir()
    assert locate("roentgen_v2", [a]) is None
    (a / "roentgen-v2" / "model_index.json").write_text("{}")
    assert locate("roentgen_v2", [a]) == a / "roentgen-v2"
