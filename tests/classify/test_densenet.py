import pytest
import torch
from rv2.models.densenet import densenet121, load_imagenet_state
from rv2.weights import MissingWeightsError


def test_fourteen_outputs_on_small_and_standard_inputs():
    torch.manual_seed(0)
    m = densenet121().eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 14)


def test_imagenet_file_with_torchvision_legacy_keys(tmp_path):
    from torchvision.models import densenet121 as tv

    torch.manual_seed(1)
    ref = tv(weights=None, num_classes=1000)
    legacy = {}
    for k, v in ref.state_dict().items():  # write keys the way the published file has them
        for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            if f".{part}." in k and "denselayer" in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        if not k.endswith("num_batches_tracked"):  # absent from the published file
            legacy[k] = v
    assert any(".norm.1." in k for k in legacy)
    f = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, f)
    state = load_imagenet_state(f)
    assert not any(k.startswith("classifier.") for k in state)
    m = densenet121(init="imagenet", weights_dir=tmp_path)
    assert torch.equal(m.features.denseblock1.denselayer1.norm1.weight,
                       ref.features.denseblock1.denselayer1.norm1.weight)
    assert m.classifier.out_features == 14


def test_missing_imagenet_file_names_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("RV2_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MissingWeightsError, match="densenet121-a639ec97.pth") as e:
        densenet121(init="imagenet")
    assert str(tmp_path) in str(e.value)


def test_not_a_densenet_file(tmp_path):
    f = tmp_path / "x.pth"
    torch.save({"foo": torch.zeros(1)}, f)
    with pytest.raises(ValueError, match="not a torchvision DenseNet-121"):
        densenet121(init="imagenet", weights_path=f)
    f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        densenet121(init="imagenet", weights_path=f)
