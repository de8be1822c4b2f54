"""Feature nets of the generator metrics: the real architectures load their published
file formats (random weights written in those formats here), match their reference
implementations, and a missing file is reported with the file, the folders searched and
the metric that needed it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rv2.evaluate import feature_nets as fn


@pytest.fixture(autouse=True)
def _no_user_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RV2_WEIGHTS_DIR", raising=False)


def _set_bn_stats(net, x):
    """Random nets keep activations in range once BatchNorm has statistics."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 1, h, w), generator=g, dtype=torch.uint8)
    return u8, u8.float() / 255


def test_tf1_bilinear_resize_equals_torch_fidelity():
    tfi = pytest.importorskip("torch_fidelity.interpolate_compat_tensorflow")
    for shape in ((2, 3, 37, 53), (1, 3, 512, 512)):
        x = torch.randint(0, 256, shape).float()  # the FID graph's 8-bit input
        ours = fn.resize_bilinear_tf1(x, 299)
        theirs = tfi.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert torch.equal(ours, theirs)  # bit for bit


def test_fid_inception_equals_torch_fidelity_extractor(tmp_path):
    tf_inc = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(0)
    net = fn.build_inception("fid")
    _set_bn_stats(net, torch.randn(2, 3, 299, 299))
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    theirs_net = tf_inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                    feature_extractor_weights_path=str(path))
    nets = fn.load_nets(["inception"], dirs=[str(tmp_path)], inception="fid")
    ours_net = nets["inception"]
    assert isinstance(ours_net, fn.InceptionFeatures), getattr(ours_net, "reason", "")
    u8, x = _images(2, 70, 70)
    ours = ours_net.features(x)
    with torch.no_grad():
        theirs = theirs_net(u8.expand(-1, 3, -1, -1).contiguous())[0].numpy()
    assert ours.shape == (2, 2048)
    scale = np.abs(theirs).max()
    assert scale > 1e-3
    assert np.abs(ours - theirs).max() <= 1e-4 * scale


def test_torchvision_inception_features_equal_torchvision_pool_output(tmp_path):
    from torchvision.models.inception import Inception3

    torch.manual_seed(1)
    ref = Inception3(num_classes=1000, aux_logits=True, transform_input=True, init_weights=False)
    _set_bn_stats(ref, torch.randn(2, 3, 299, 299))
    torch.save(ref.state_dict(), tmp_path / "inception_v3_google-0cc3c7bd.pth")  # with AuxLogits
    ours_net = fn.load_nets(["inception"], dirs=[str(tmp_path)], inception="torchvision")["inception"]
    assert isinstance(ours_net, fn.InceptionFeatures), getattr(ours_net, "reason", "")
    _, x = _images(2, 64, 64, seed=1)
    pooled = {}
    ref.avgpool.register_forward_hook(lambda m, i, o: pooled.setdefault("x", o.flatten(1)))
    x299 = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299),
                                           mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref((x299 - mean) / std)  # torchvision's own input convention (transform_input=True)
    ours = ours_net.features(x)
    theirs = pooled["x"].numpy()
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_xrv_densenet_from_state_dict_and_trusted_pickle(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    from rv2.weights import KNOWN_BY_KEY

    torch.manual_seed(2)
    ref = xrv.models.DenseNet(weights=None).eval()
    fname = KNOWN_BY_KEY["xrv_densenet"].filename
    sd_dir, pk_dir = tmp_path / "sd", tmp_path / "pickle"
    sd_dir.mkdir()
    pk_dir.mkdir()
    torch.save(ref.state_dict(), sd_dir / fname)
    torch.save(ref, pk_dir / fname)  # the published file is a whole pickled model

    net = fn.load_nets(["disease"], dirs=[str(sd_dir)])["disease"]
    assert isinstance(net, fn.XRVDenseNet), getattr(net, "reason", "")
    assert len(net.labels) == 18 and "Pleural Effusion" in net.labels and "Effusion" not in net.labels
    _, x = _images(3, 96, 96, seed=2)
    probs = net.predict(x)
    with torch.no_grad():
        pre = net.preprocess(x)
        assert pre.shape == (3, 1, 224, 224) and pre.min() >= -1024 and pre.max() <= 1024
        expect = torch.sigmoid(ref(pre)).numpy()
        feats = ref.features2(pre).numpy()
    assert np.allclose(probs, expect, atol=1e-5)
    assert np.allclose(net.features(x), feats, atol=1e-5)

    refused = fn.load_nets(["disease"], dirs=[str(pk_dir)])["disease"]
    assert not refused and "xrv_trust_pickle" in refused.reason and fname in refused.reason
    trusted = fn.load_nets(["disease"], dirs=[str(pk_dir)], xrv_trust_pickle=True)["disease"]
    assert np.allclose(trusted.predict(x), expect, atol=1e-5)


def test_biovil_loads_its_state_dict_layout(tmp_path):
    torch.manual_seed(3)
    ref = fn.build_biovil()
    _set_bn_stats(ref, torch.randn(2, 3, 64, 64))
    state = ref.state_dict()
    state["encoder.encoder.fc.weight"] = torch.zeros(1000, 2048)  # a head the file may carry
    folder = tmp_path / "biovil"
    folder.mkdir()
    torch.save(state, folder / fn.BIOVIL_FILE)
    # found in a weight folder's biovil/ subfolder, and by an explicit folder
    for kw in ({"dirs": [str(tmp_path)]}, {"biovil_path": str(folder)}):
        net = fn.load_nets(["biovil"], **kw)["biovil"]
        assert isinstance(net, fn.BioViLEncoder), getattr(net, "reason", "")
    _, x = _images(1, 80, 80, seed=3)
    emb = net.features(x)
    assert emb.shape == (1, 128)
    with torch.no_grad():
        assert np.allclose(emb, ref(net.preprocess(x)).numpy(), atol=1e-5)
    assert net.preprocess(x).shape == (1, 3, 448, 448)


def test_missing_weight_files_name_the_file_the_folders_and_the_metric(tmp_path):
    empty = tmp_path / "empty-weights"
    empty.mkdir()
    nets = fn.load_nets(["inception", "disease", "biovil"], dirs=[str(empty)])
    expect = {"inception": ("pt_inception-2015-12-05-6726825d.pth", "FID"),
              "disease": ("densenet121", "disease AUROC"),
              "biovil": (fn.BIOVIL_FILE, "BioViL cosine")}
    for role, (fname, metric) in expect.items():
        u = nets[role]
        assert isinstance(u, fn.Unavailable) and not u
        assert fname in u.reason, u.reason
        assert str(empty) in u.reason and ".torchxrayvision" in u.reason, u.reason
        assert metric in u.reason and "skipped" in u.reason


def test_eval_bundle_roundtrip_and_missing_net(tmp_path):
    from rv2.models.qc_networks import SmallCNN

    torch.manual_seed(4)
    nets = {"disease": SmallCNN(1, 4, 2, 2).eval(), "inception": SmallCNN(1, 4, 1, 2).eval()}
    spec = {"disease": {"arch": "SmallCNN", "kwargs": {"in_ch": 1, "width": 4, "n_out": 2, "depth": 2},
                        "input_size": 32, "labels": ["Edema", "Cardiomegaly"]},
            "inception": {"arch": "SmallCNN", "kwargs": {"in_ch": 1, "width": 4, "n_out": 1, "depth": 2},
                          "input_size": 32}}
    fn.save_eval_bundle(tmp_path / "b", nets, spec)
    got = fn.load_nets(["disease", "inception", "biovil"], bundle=str(tmp_path / "b"))
    _, x = _images(3, 48, 48, seed=4)
    d = got["disease"]
    assert d.labels == ("Edema", "Cardiomegaly") and d.predict(x).shape == (3, 2)
    with torch.no_grad():
        expect = torch.sigmoid(nets["disease"](2 * fn.resize_area(x, 32) - 1)).numpy()
    assert np.allclose(d.predict(x), expect, atol=1e-6)
    assert got["inception"].features(x).shape == (3, 8)
    assert not got["biovil"] and "no 'biovil' net" in got["biovil"].reason
    (tmp_path / "b" / "inception.safetensors").unlink()
    again = fn.load_nets(["inception"], bundle=str(tmp_path / "b"))["inception"]
    assert not again and "inception.safetensors" in again.reason and "FID" in again.reason
    with pytest.raises(ValueError, match="images B x 1"):
        d.features(torch.zeros(2, 3, 8, 8))
