"""Generator fine-tuning on tiny in-code models (CPU): it learns, it resumes exactly,
its latent cache is equivalent, and its output is a loadable diffusers pipeline."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rv2.finetune import data as td
from rv2.finetune.config import TrainGeneratorConfig
from rv2.finetune.train import denoising_loss, find_checkpoints, train_generator
from rv2.models import sd
from rv2.testing.sd import tiny_components

REPO = Path(__file__).resolve().parents[2]
RES = 32  # pixels; tiny VAE latents are 16x16


def _images(folder: Path, n: int) -> Path:
    from rv2.data.imageio import save_png

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        yy, xx = np.mgrid[:40, :48]  # not square: exercises the padding
        save_png(folder / f"im{i}.png", 0.5 + 0.4 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i)))
        (folder / f"im{i}.txt").write_text(f"{50 + i} year old WHITE male. finding number {i} .")
    return folder


def _cfg(tmp: Path, images: Path, *extra: str) -> TrainGeneratorConfig:
    return TrainGeneratorConfig().override([
        f"output_dir={tmp}", "data.source=folder", f"data.image_dir={images}",
        f"data.resolution={RES}", "data.num_workers=0", "optim.batch_size=2", "optim.lr=1e-3",
        "optim.warmup_steps=0", "checkpoint.every=0", "validation.every=0", "logging.every=1",
        "logging.progress=false", "logging.tensorboard=false", *extra])


def _log(run: Path) -> list[dict]:
    with open(run / "logs" / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


class Crash(RuntimeError):
    pass


def crash_at(step_to_crash: int):
    """An on_step callback that interrupts training after that optimizer step."""
    def on_step(step, row):
        if step == step_to_crash:
            raise Crash
    return on_step


@pytest.fixture(autouse=True)
def _threads():
    # One thread: on the shared 2-core machine two OpenMP threads per process ran 11x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_model_overfits_a_handful_of_images(tmp_path):
    images = _images(tmp_path / "img", 4)
    cfg = _cfg(tmp_path / "run", images, "optim.batch_size=4", "optim.max_steps=40",
               "data.latent_cache=true")
    comps = tiny_components(seed=0, sample_size=RES)
    ds = td.build_dataset(cfg.data)
    pixels = torch.stack([ds[i]["pixels"] for i in range(4)])
    prompts = [r.prompt for r in ds.records]
    before = denoising_loss(comps, pixels, prompts, draws=16)
    train_generator(cfg, comps)
    after = denoising_loss(comps, pixels, prompts, draws=16)
    # measured: 1.12 -> 0.17 (6.4x) in 40 steps; demand at least 3x
    assert after < before / 3, (before, after)
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert float(rows[0]["samples_per_s"]) > 0 and float(rows[-1]["epoch"]) == 40.0
    assert list((tmp_path / "run" / "latent_cache").glob("latents-*.npy"))


def test_interrupted_and_resumed_run_follows_the_same_trajectory(tmp_path):
    images = _images(tmp_path / "img", 3)  # 3 items, batch 2: batches straddle epochs
    opts = ("optim.max_steps=8", "optim.grad_accum=2", "optim.schedule=cosine",
            "optim.warmup_steps=2", "model.ema=true", "model.ema_decay=0.9",
            "checkpoint.every=2", "checkpoint.keep_last=2")
    full = train_generator(_cfg(tmp_path / "full", images, *opts),
                           tiny_components(seed=0, sample_size=RES))

    cut = _cfg(tmp_path / "cut", images, *opts)
    with pytest.raises(Crash):
        train_generator(cut, tiny_components(seed=0, sample_size=RES), on_step=crash_at(5))
    assert [p.name for p in find_checkpoints(tmp_path / "cut" / "checkpoints")] == \
        ["step-00000002", "step-00000004"]  # keep-last-2; nothing half-written
    resumed = train_generator(cut, tiny_components(seed=0, sample_size=RES))
    a, b = _log(tmp_path / "full"), _log(tmp_path / "cut")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 9)]
    for ra, rb in zip(a, b):  # bit-identical losses, learning rates and sample counts
        assert (ra["loss"], ra["lr"], ra["samples"]) == (rb["loss"], rb["lr"], rb["samples"])
    assert len({r["lr"] for r in a}) > 3  # the cosine schedule really moved
    summary = json.loads((resumed / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["steps_this_run"] == 4
    assert summary["resumed_from"].endswith("step-00000004") and summary["samples_seen"] == 32
    ua, ub = sd.load_components(full).unet.state_dict(), sd.load_components(resumed).unet.state_dict()
    assert all(torch.equal(ua[k], ub[k]) for k in ua)  # same (EMA) weights at the end


def test_workers_latent_cache_and_gradient_checkpointing_train_like_the_baseline(tmp_path):
    images = _images(tmp_path / "img", 3)
    runs = {}
    for name, extra in [("pixels", []), ("workers", ["data.num_workers=2"]),
                        ("cache", ["data.latent_cache=true"]),
                        ("cache+ckpt", ["data.latent_cache=true",
                                        "model.gradient_checkpointing=true"])]:
        run = tmp_path / name
        train_generator(_cfg(run, images, "optim.max_steps=3", *extra),
                        tiny_components(seed=0, sample_size=RES))
        runs[name] = [float(r["loss"]) for r in _log(run)]
    assert runs["workers"] == runs["pixels"]  # loader workers do not change the order
    # same draws per sample number: only float summation order differs
    np.testing.assert_allclose(runs["cache"], runs["pixels"], rtol=1e-4)
    np.testing.assert_allclose(runs["cache+ckpt"], runs["pixels"], rtol=1e-4)
    assert runs["pixels"][2] < runs["pixels"][0]


def test_cli_trains_from_a_model_folder_and_writes_a_loadable_pipeline(tmp_path):
    import pandas as pd
    from click.testing import CliRunner
    from diffusers import StableDiffusionPipeline
    from rv2.cli import main
    from rv2.config import read_artifact_meta

    base = sd.save_pipeline(tiny_components(seed=1, sample_size=RES), tmp_path / "base")
    _images(tmp_path / "data" / "img", 3)
    table = tmp_path / "data" / "prompts.parquet"
    pd.DataFrame({"image_id": ["a", "b", "c"], "path": [f"img/im{i}.png" for i in range(3)],
                  "prompt": ["one", "two", "three"], "prompt_id": [1, 2, 3]}).to_parquet(table)
    out = tmp_path / "run"
    args = ["train-generator", "--set", f"output_dir={out}", "--set", f"model.base={base}",
            "--set", f"data.prompts_table={table}", "--set", f"data.resolution={RES}",
            "--set", "data.num_workers=0", "--set", "optim.batch_size=2",
            "--set", "optim.max_steps=2", "--set", "validation.every=2",
            "--set", "validation.steps=2", "--set", "validation.prompts=['50 year old BLACK male. x .']",
            "--set", "logging.progress=false"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    pipe_dir = out / "pipeline"
    assert (out / "samples" / "step-00000002" / "00.png").is_file()
    assert (out / "logs" / "tensorboard").is_dir()
    meta = read_artifact_meta(pipe_dir)
    assert meta["config"]["optim"]["max_steps"] == 2 and meta["training"]["steps"] == 2
    assert {i["path"] for i in meta["inputs"]} == {str(table), str(base)}
    assert (pipe_dir / "config.yaml").is_file()
    comps = sd.load_components(pipe_dir)  # what `rv2 generate` uses
    assert not torch.equal(comps.unet.conv_in.weight,
                           sd.load_components(base).unet.conv_in.weight)  # it trained
    pipe = StableDiffusionPipeline.from_pretrained(str(pipe_dir), safety_checker=None)
    img = pipe("50 year old BLACK male. x .", num_inference_steps=2, height=RES, width=RES,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert img.shape == (RES, RES, 3) and np.isfinite(img).all()

    bad = CliRunner().invoke(main, ["train-generator", "--set", f"model.base={tmp_path / 'nope'}",
                                    "--set", f"data.prompts_table={table}"])
    assert bad.exit_code != 0 and "model folder not found" in bad.output


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 CPU processes (accelerate launch, gloo) x batch 2 == 1 process x batch 4.

    The 2-process run also builds the latent cache together (each process encodes every
    other image into one file); the 1-process run reads pixels.
    """
    base = sd.save_pipeline(tiny_components(seed=0, sample_size=RES), tmp_path / "base")
    images = _images(tmp_path / "img", 5)
    common = ["--set", f"model.base={base}", "--set", "data.source=folder",
              "--set", f"data.image_dir={images}", "--set", f"data.resolution={RES}",
              "--set", "data.num_workers=0", "--set", "optim.max_steps=4", "--set", "optim.lr=1e-3",
              "--set", "optim.warmup_steps=0", "--set", "validation.every=0",
              "--set", "checkpoint.every=2", "--set", "logging.every=1",
              "--set", "logging.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu selects the torchrun launcher; with no GPU our Accelerator(cpu=True) then runs
    # gloo across CPU processes (`accelerate launch --cpu` alone would start one process).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "rv2.cli", "train-generator", "--set", f"output_dir={tmp_path / 'two'}",
              "--set", "optim.batch_size=2", "--set", "data.latent_cache=true", *common]
    r = subprocess.run(launch, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    one = [sys.executable, "-m", "rv2.cli", "train-generator", "--set",
           f"output_dir={tmp_path / 'one'}", "--set", "optim.batch_size=4", *common]
    r = subprocess.run(one, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two, single = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert [r["samples"] for r in two] == [r["samples"] for r in single] == ["4", "8", "12", "16"]
    np.testing.assert_allclose([float(r["loss"]) for r in two],
                               [float(r["loss"]) for r in single], rtol=1e-4)
    assert json.loads((tmp_path / "two" / "pipeline" / "training_summary.json").read_text()
                      )["processes"] == 2


def test_prompt_dropout_trains_the_unconditional_branch_and_resumes_exactly(tmp_path):
    from rv2.config import ConfigError

    with pytest.raises(ConfigError, match="prompt_dropout"):
        _cfg(tmp_path / "bad", tmp_path, "model.prompt_dropout=1.0").validate()
    images = _images(tmp_path / "img", 3)
    opts = ("optim.max_steps=6", "checkpoint.every=2", "model.prompt_dropout=0.5")
    base = train_generator(_cfg(tmp_path / "none", images, "optim.max_steps=6"),
                           tiny_components(seed=0, sample_size=RES))
    full = train_generator(_cfg(tmp_path / "full", images, *opts),
                           tiny_components(seed=0, sample_size=RES))
    a0, a = _log(tmp_path / "none"), _log(tmp_path / "full")
    # same timesteps and noise per sample; only the dropped prompts change the losses
    assert [r["loss"] for r in a0] != [r["loss"] for r in a]

    cut = _cfg(tmp_path / "cut", images, *opts)
    with pytest.raises(Crash):
        train_generator(cut, tiny_components(seed=0, sample_size=RES), on_step=crash_at(3))
    train_generator(cut, tiny_components(seed=0, sample_size=RES))
    b = _log(tmp_path / "cut")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert base.is_dir() and full.is_dir()
