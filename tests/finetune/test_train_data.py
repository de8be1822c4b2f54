"""Training data for the generator: the three sources, preprocessing, the resumable order."""
from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from rv2.config import ConfigError
from rv2.finetune import data as td
from rv2.finetune.config import TrainGeneratorConfig, load_train_config


def _img(h, w, k=0):
    yy, xx = np.mgrid[:h, :w]
    return (0.5 + 0.4 * np.sin(xx / (3 + k)) * np.cos(yy / (4 + k))).astype(np.float32)


def test_preprocess_pads_with_black_and_scales_to_unit_range():
    tall = np.ones((40, 20), np.float32)  # white, taller than wide
    t = td.preprocess(tall, 32)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    # padding is black (-1) on both sides, the image white (+1) in the middle
    assert t[0, :, 0].max() == -1 and t[0, :, -1].max() == -1
    assert torch.allclose(t[0, :, 16], torch.ones(32))
    assert t.min() >= -1 and t.max() <= 1


def test_wds_shards_in_the_authors_layout(tmp_path):
    a = [(f"s{i:03d}", _img(24, 30, i), f"{40 + i} year old BLACK female. finding {i} .")
         for i in range(3)]
    b = [("dir/t000", _img(30, 30, 7), "71 year old ASIAN male. No acute process .")]
    td.write_wds_shard(tmp_path / "shard-000.tar", a)
    td.write_wds_shard(tmp_path / "shard-001.tar", b)
    assert (tmp_path / "shard-000_size.txt").read_text().strip() == "3"
    cfg = TrainGeneratorConfig().override([f"data.shards=['{tmp_path}/shard-*.tar']",
                                           "data.source=wds", "data.resolution=16"])
    ds = td.build_dataset(cfg.data)
    assert ds.keys() == ["s000", "s001", "s002", "dir/t000"]
    assert [r.prompt for r in ds.records][3] == b[0][2]
    np.testing.assert_array_equal(ds.load01(1), a[1][1])
    item = ds[3]
    assert item["pixels"].shape == (3, 16, 16) and item["index"] == 3


def test_wds_refuses_code_and_names_broken_samples(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        for name, payload in (("x.pt_image", pickle.dumps(Evil())), ("x.prompt_metadata", b"p")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    cfg = TrainGeneratorConfig().override([f"data.shards=['{bad}']", "data.source=wds"])
    ds = td.build_dataset(cfg.data)
    with pytest.raises(td.TrainDataError, match=r"bad.tar:x.pt_image.*refusing"):
        ds.load01(0)
    half = tmp_path / "half.tar"
    with tarfile.open(half, "w") as tf:
        info = tarfile.TarInfo("y.pt_image")
        payload = pickle.dumps(torch.zeros(4, 4))
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(td.TrainDataError, match=r"sample 'y' lacks prompt_metadata"):
        td.build_dataset(cfg.override([f"data.shards=['{half}']"]).data)
    with pytest.raises(td.TrainDataError, match="no shard matches"):
        td.build_dataset(cfg.override([f"data.shards=['{tmp_path}/none-*.tar']"]).data)


def test_prompts_table_and_folder_sources(tmp_path):
    import pandas as pd
    from rv2.data.imageio import save_png

    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    for i in range(3):
        save_png(root / "files" / f"im{i}.png", _img(20, 26, i))
    table = tmp_path / "prompts.parquet"
    pd.DataFrame({"image_id": ["a", "b", "c"], "path": [f"files/im{i}.png" for i in range(3)],
                  "prompt": ["p one", "p two", "p three"], "prompt_id": [10, 11, 12]}).to_parquet(table)
    cfg = TrainGeneratorConfig().override([f"data.prompts_table={table}", f"data.data_root={root}",
                                           "data.resolution=16"])
    ds = td.build_dataset(cfg.data)
    assert len(ds) == 3 and ds.keys()[1] == "b/11" and ds[2]["prompt"] == "p three"
    assert ds[0]["pixels"].shape == (3, 16, 16)
    with pytest.raises(td.TrainDataError, match="data.data_root"):
        td.build_dataset(cfg.override([f"data.data_root={tmp_path}"]).data)
    pd.DataFrame({"image_id": ["a"], "file": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(td.TrainDataError, match=r"lacks column\(s\) \['path', 'prompt'\]"):
        td.build_dataset(cfg.override([f"data.prompts_table={tmp_path / 'bad.parquet'}"]).data)

    # folder: <stem>.txt beside (or in prompt_dir); images without a prompt are skipped
    (root / "files" / "im0.txt").write_text("first prompt\n")
    (root / "files" / "im2.txt").write_text("third prompt")
    fcfg = cfg.override(["data.source=folder", f"data.image_dir={root / 'files'}"])
    fds = td.build_dataset(fcfg.data)
    assert fds.keys() == ["im0", "im2"] and fds[0]["prompt"] == "first prompt"
    with pytest.raises(td.TrainDataError, match="image folder not found"):
        td.build_dataset(fcfg.override([f"data.image_dir={tmp_path / 'nope'}"]).data)


def test_stream_order_is_shardable_and_fast_forwards():
    n, seed = 7, 3
    one = td.StreamSampler(n, 4, seed)
    two = [td.StreamSampler(n, 2, seed, rank=r, world=2) for r in range(2)]
    it1, its = iter(one), [iter(s) for s in two]
    stream = []
    for _ in range(6):  # 24 samples: more than three epochs
        b = next(it1)
        assert b == next(its[0]) + next(its[1])  # 2 processes x 2 == 1 process x 4
        stream += b
    for e in range(3):  # each epoch is a permutation of all items
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]  # a new order each epoch
    resumed = iter(td.StreamSampler(n, 4, seed, start=8))  # after two batches
    assert next(resumed) + next(resumed) == stream[8:16]
    assert one.positions(2) == [8, 9, 10, 11] and two[1].positions(1) == [6, 7]


def test_config_presets_and_scientific_notation(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 2e-5\n  max_steps: 100\n")
    cfg = load_train_config(f, ["optim.warmup_steps=10"], preset="authors")
    assert cfg.optim.lr == pytest.approx(2e-5) and cfg.optim.schedule == "cosine"
    assert cfg.optim.weight_decay == 1e-2 and cfg.optim.max_grad_norm == 1.0
    assert cfg.optim.warmup_steps == 10 and cfg.optim.max_steps == 100
    paper = load_train_config()
    assert paper.optim.schedule == "constant_with_warmup" and paper.optim.warmup_steps == 500
    assert TrainGeneratorConfig().override(["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_train_config(preset="nope")
    with pytest.raises(ConfigError, match="batch_size"):
        load_train_config(overrides=["optim.batch_size=0"])
    with pytest.raises(ConfigError, match="not one of"):
        load_train_config(overrides=["optim.schedule=exp"])
