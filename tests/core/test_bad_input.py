"""The bad-input catalogue, run through the CLI: every case exits with its status,
says one line naming the input (`Error: ...`), prints no traceback, and a store
it touched stays consistent and resumable.

A new command or reader joins by adding a row to CASES (or, for store cases,
to the store tests below). See docs/bad-input.md for the rules checked here.
"""
from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rv2 import cli
from rv2.data.manifest import conform
from rv2.data.schema import CHEXPERT_LABELS, age_bin

# ------------------------------------------------------------------ inputs


def manifest_frame(n: int = 8, **cols) -> pd.DataFrame:
    """A small valid manifest (every schema column, real values), then `cols` replaced."""
    rng = np.random.default_rng(0)
    age = np.array([25, 35, 45, 55, 65, 75, 85, 30][:n] * (n // 8 + 1))[:n].astype(float)
    df = pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)], "path": [f"img{i}.png" for i in range(n)],
        "patient_id": [f"p{i}" for i in range(n)], "study_id": [f"s{i}" for i in range(n)],
        "dataset": "mimic", "view": "PA", "sex": ["F", "M"] * (n // 2) + ["F"] * (n % 2),
        "age": age, "age_bin": [age_bin(a) for a in age],
        "race": (["Asian", "Black", "Hispanic", "White"] * n)[:n], "split": "test",
        "impression": [f"No acute process, case {i}." for i in range(n)], "report": None})
    for j, c in enumerate(CHEXPERT_LABELS):
        df[c] = rng.choice([0.0, 1.0], n)
    df = conform(df)
    for k, v in cols.items():
        df[k] = v
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False)  # as a user's own tool would: no rv2 validation
    return path


def nih_csv(path: Path, drop: str | None = None, n: int = 4) -> Path:
    cols = {"Image Index": [f"{i:08d}_000.png" for i in range(n)],
            "Finding Labels": ["No Finding", "Effusion", "Cardiomegaly|Edema", "No Finding"][:n],
            "Follow-up #": [0] * n, "Patient ID": list(range(n)), "Patient Age": [40] * n,
            "Patient Gender": ["F", "M"] * (n // 2), "View Position": ["PA"] * n}
    cols.pop(drop, None)
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def chexpert_csv(path: Path, drop: str | None = None) -> Path:
    row = {"Path": "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", "Sex": "Female",
           "Age": 60, "Frontal/Lateral": "Frontal", "AP/PA": "PA"}
    row.update({c: 1.0 if c == "No Finding" else None for c in CHEXPERT_LABELS})
    row.pop(drop, None)
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def predictions_for(man: pd.DataFrame, path: Path) -> Path:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.random((len(man), len(CHEXPERT_LABELS))), columns=list(CHEXPERT_LABELS))
    df.insert(0, "image_id", man["image_id"].to_numpy())
    return write_parquet(df, path)


def prompts_table(n: int = 4, **cols) -> pd.DataFrame:
    df = pd.DataFrame({"prompt_id": [f"q{i}" for i in range(n)],
                       "impression_short": ["No acute process."] * n,
                       "age": [50.0] * n, "sex": ["F", "M"] * (n // 2),
                       "race": ["White"] * n, "split": "train"})
    for k, v in cols.items():
        df[k] = v
    return df


_SHARED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_folder(tmp_path_factory):
    """A folder for inputs that several cases read unchanged (built once)."""
    _SHARED["root"] = tmp_path_factory.mktemp("shared")
    yield
    _SHARED.clear()


def classifier_dir() -> Path:
    """A DenseNet-121 classifier folder as `rv2 train-classifier` writes it (random weights)."""
    from rv2.classify import model_dir as md
    from rv2.models.densenet import densenet121, model_config

    path = _SHARED["root"] / "classifier"
    if path.is_dir():
        return path
    path.mkdir(parents=True)
    md.save_weights(densenet121(num_classes=len(CHEXPERT_LABELS), init="scratch"),
                    path / md.WEIGHTS)
    (path / md.MODEL_CONFIG).write_text(json.dumps(model_config(CHEXPERT_LABELS, 32, 0.5, 0.25)))
    (path / md.THRESHOLDS).write_text(json.dumps({
        "labels": list(CHEXPERT_LABELS), "rule": ">=",
        "thresholds": {c: 0.5 for c in CHEXPERT_LABELS}}))
    return path


def predict_args(tmp: Path, n: int, n_missing: int, *extra: str) -> list[str]:
    """A manifest of n 32-px PNGs of which the last n_missing are not on disk."""
    from PIL import Image

    man = manifest_frame(n)
    (tmp / "img").mkdir(exist_ok=True)
    man["path"] = [f"img/{i}.png" for i in man["image_id"]]
    for rel in man["path"][: n - n_missing]:
        Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp / rel)
    m = write_parquet(man, tmp / "m.parquet")
    return ["predict", "--model", str(classifier_dir()), "--manifest", str(m),
            "--root", str(tmp), "--out", str(tmp / "pred.parquet"), "--device", "cpu", *extra]


def _no_predictions_written(tmp: Path, res) -> None:
    assert not (tmp / "pred.parquet").exists()
    assert len(pd.read_csv(tmp / "pred.skipped.csv")) == 4


def _partial_predictions_written(tmp: Path, res) -> None:
    assert len(pd.read_parquet(tmp / "pred.parquet")) == 18
    assert len(pd.read_csv(tmp / "pred.skipped.csv")) == 2


# ------------------------------------------------------------------ the catalogue


@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # writes the inputs under tmp, returns the argv
    names: tuple[str, ...]              # what the one line must name
    code: int = 2
    check: Callable[[Path, object], None] | None = None  # more checks on (tmp, result)


def _evaluate_args(tmp: Path, man: pd.DataFrame) -> list[str]:
    m = write_parquet(man, tmp / "manifest.parquet")
    p = predictions_for(man, tmp / "pred.parquet")
    return ["evaluate", "--pred", str(p), "--manifest", str(m), "--out", str(tmp / "rep"),
            "--set", "n_boot=20", "--set", "min_count=1"]


def _female_subgroups_filled(tmp: Path, res) -> None:
    report = json.loads((tmp / "rep" / "report.json").read_text())
    text = json.dumps(report)
    assert '"female / ' in text.lower() or "female" in text.lower()
    # the manifest's `Female` rows count as F: F/M are both present in every subgroup table
    sets = report["test_sets"]
    for ts in sets.values():
        for model in ts["models"].values():
            sizes = {g["group"]: g["n"] for g in model["fairness"]["sex_race"]["subgroups"]}
            assert sum(n for g, n in sizes.items() if g.lower().startswith("female")) == 40


def _missing_files_reported(tmp: Path, res) -> None:
    assert "4 of 4 image file(s) do not exist" in res.stderr
    assert "--verify-files" in res.stderr
    side = json.loads((tmp / "nih.sidecar.json").read_text())
    assert side["missing_files"]["count"] == 4


CASES = [
    # --- silent wrong results: demographic values against the schema
    Case("evaluate-female-mapped",
         lambda t: _evaluate_args(t, manifest_frame(80, sex=["Female", "male"] * 40)),
         (), code=0, check=_female_subgroups_filled),
    Case("evaluate-unknown-sex",
         lambda t: _evaluate_args(t, manifest_frame(8, sex=["Femme"] + ["F", "M"] * 3 + ["M"])),
         ("manifest.parquet", "'sex'", "Femme", "0 (img0)")),
    Case("evaluate-race-typo",
         lambda t: _evaluate_args(t, manifest_frame(8, race=["Whyte"] * 2 + ["Black"] * 6)),
         ("manifest.parquet", "'race'", "Whyte", "2 row(s)")),
    Case("evaluate-text-labels",
         lambda t: _evaluate_args(t, manifest_frame(8, Edema=["yes"] * 8)),
         ("manifest.parquet", "'Edema'", "yes")),
    Case("stats-age-text",
         lambda t: ["data", "stats", str(write_parquet(
             manifest_frame(8, age=["abc"] + ["40"] * 7), t / "m.parquet"))],
         ("m.parquet", "'age'", "abc")),
    Case("stats-age-out-of-range",
         lambda t: ["data", "stats", str(write_parquet(
             manifest_frame(8, age=[200.0] + [40.0] * 7), t / "m.parquet"))],
         ("m.parquet", "'age'", "200", "[0, 120]")),
    Case("stats-sex-unknown",
         lambda t: ["data", "stats", str(write_parquet(
             manifest_frame(8, sex=["U"] * 8), t / "m.parquet"))],
         ("m.parquet", "'sex'", "'U'", "8 row(s)")),
    Case("prompts-build-string-labels",
         lambda t: ["prompts", "build", "--manifest", str(write_parquet(
             manifest_frame(8, Cardiomegaly=["1.0", "0.0"] * 4), t / "m.parquet")),
             "--out", str(t / "p.parquet")],
         ("m.parquet", "'Cardiomegaly'", "text")),
    Case("prompts-expand-bad-sex",
         lambda t: ["prompts", "expand", str(write_parquet(
             prompts_table(sex=["F", "X", "M", "F"]), t / "p.parquet")),
             "--out", str(t / "e.parquet")],
         ("p.parquet", "'sex'", "'X'", "1 (q1)")),
    Case("prompts-expand-age-200",
         lambda t: ["prompts", "expand", str(write_parquet(
             prompts_table(age=[50.0, 200.0, 40.0, 30.0]), t / "p.parquet")),
             "--out", str(t / "e.parquet")],
         ("p.parquet", "'age'", "200", "1 (q1)")),
    Case("prompts-import-csv-bad-race",
         lambda t: ["prompts", "import-csv", str(_authors_csv(t / "a.csv", race="MARTIAN")),
                    "--out", str(t / "p.parquet")],
         ("a.csv", "'race'", "MARTIAN")),
    # --- data index: missing files are counted, --verify-files suggested
    Case("index-missing-files",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata",
                    str(nih_csv(t / "nih.csv")), "--root", str(_folder(t / "root")),
                    "--out", str(t / "nih.parquet"), "--quiet"],
         (), code=0, check=_missing_files_reported),
    # --- predict: nothing read, or too much unread, is a failure
    Case("predict-nothing-readable", lambda t: predict_args(t, 4, 4),
         ("no image could be read", "pred.skipped.csv", "--root"), check=_no_predictions_written),
    Case("predict-unreadable-share", lambda t: predict_args(t, 20, 2),
         ("2 of 20", "10.0%", "5.0%", "pred.skipped.csv"), check=_partial_predictions_written),
    Case("predict-unreadable-share-allowed",
         lambda t: predict_args(t, 20, 2, "--max-unreadable", "0.2"), (), code=0,
         check=_partial_predictions_written),
    # --- tracebacks before: config and adapter errors
    Case("config-unknown-override",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata", str(nih_csv(t / "n.csv")),
                    "--out", str(t / "o.parquet"), "--set", "verify_filez=true"],
         ("verify_filez", "unknown field")),
    Case("config-wrong-type",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata", str(nih_csv(t / "n.csv")),
                    "--out", str(t / "o.parquet"), "--config", str(_text(t / "c.yaml",
                                                                             "workers: abc\n"))],
         ("c.yaml", "workers", "integer")),
    Case("config-not-text",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata", str(nih_csv(t / "n.csv")),
                    "--out", str(t / "o.parquet"), "--config", str(_bytes(t / "c.yaml"))],
         ("c.yaml", "not a text file")),
    Case("config-bad-regex",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata", str(nih_csv(t / "n.csv")),
                    "--out", str(t / "o.parquet"), "--set", 'nondescriptive_patterns=["("]'],
         ("nondescriptive_patterns", "'('")),
    Case("nih-without-patient-age",
         lambda t: ["data", "index", "--dataset", "nih", "--metadata",
                    str(nih_csv(t / "Data_Entry.csv", drop="Patient Age")),
                    "--out", str(t / "o.parquet")],
         ("Data_Entry.csv", "['Patient Age']", "needs")),
    Case("chexpert-without-sex",
         lambda t: ["data", "index", "--dataset", "chexpert", "--metadata",
                    str(chexpert_csv(t / "train.csv", drop="Sex")), "--out", str(t / "o.parquet")],
         ("train.csv", "['Sex']", "needs")),
]


def _folder(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _text(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _bytes(p: Path) -> Path:
    p.write_bytes(bytes(range(128, 256)) * 4)
    return p


def _authors_csv(p: Path, race: str = "WHITE") -> Path:
    pd.DataFrame({"dicom_id": ["d1", "d2"], "gender": ["F", "M"], "anchor_age": ["50", "60"],
                  "race": ["WHITE", race], "impression_short": ["No acute process."] * 2,
                  "prompt_variation": ["50 year old WHITE female. No acute process ."] * 2}
                 ).to_csv(p, index=False)
    return p


def assert_one_line_error(res, names=(), code=2) -> str:
    """Exit status `code`, no traceback, and (for a failure) one `Error:` line, the
    last of stderr, naming each of `names`."""
    out = res.output + (res.stderr or "")
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, out
    if code == 0:
        return ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def run_cli(args: list[str]):
    return CliRunner().invoke(cli.main, args, catch_exceptions=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, tmp_path):
    res = run_cli(case.setup(tmp_path))
    assert_one_line_error(res, case.names, case.code)
    if case.check is not None:
        case.check(tmp_path, res)


# ------------------------------------------------------------------ 16-bit PNG


def _png16(a: np.ndarray, sbit: int | None = None) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a.astype("<u2")).save(buf, format="PNG")
    data = buf.getvalue()
    if sbit is None:
        return data
    chunk = b"sBIT" + bytes([sbit])
    end = 8 + 12 + 13  # after the signature and IHDR
    return (data[:end] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + data[end:])


def test_twelve_bit_png_is_scaled_by_its_bits():
    from rv2.data.imageio import ImageDepthWarning, decode_image

    a = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 12-bit values, max 4080
    img = decode_image(_png16(a, sbit=12))
    assert np.isclose(img.max(), 4080 / 4095)  # not 4080 / 65535 = 0.06
    with pytest.warns(ImageDepthWarning, match="below 4096"):
        img = decode_image(_png16(a))
    assert np.isclose(img.max(), 4080 / 4095)
    full = (a.astype(np.uint32) * 16).astype(np.uint16)  # the same image shifted to 16 bits
    assert np.isclose(decode_image(_png16(full, sbit=12)).max(), 65280 / 65535)


# ------------------------------------------------------------------ generation


def generation_prompts(n: int, **cols) -> pd.DataFrame:
    """An expanded prompts table as `rv2 prompts expand` writes it (the template's text)."""
    sexes, races = ["F", "M"], ["Asian", "Black", "Hispanic", "White"]
    rows = []
    for i in range(n):
        sex, race, age = sexes[i % 2], races[(i // 2) % 4], 30 + i % 50
        rows.append({"prompt_id": f"q{i:04d}", "source_prompt_id": f"s{i // 8}",
                     "prompt": f"{age} year old {race.upper()} {'female' if sex == 'F' else 'male'}"
                               f". No acute process {i} .",
                     "sex": sex, "race": race, "age": float(age), "image_id": f"img{i // 8}",
                     "patient_id": f"pat{i // 8}", "split": "train", "dataset": "mimic",
                     **{c: 0.0 for c in CHEXPERT_LABELS}})
    df = pd.DataFrame(rows)
    for k, v in cols.items():
        df[k] = v
    return df


def tiny_generator() -> Path:
    """A diffusers folder of random tiny components (32 px images), saved once."""
    from rv2.models.sd import save_pipeline
    from rv2.testing.sd import tiny_components

    path = _SHARED["root"] / "generator"
    if not path.is_dir():
        save_pipeline(tiny_components(seed=0, sample_size=32), path)
    return path


def generate_args(tmp: Path, prompts: pd.DataFrame, *extra: str, model: Path | None = None,
                  out: Path | None = None) -> list[str]:
    p = write_parquet(prompts, tmp / "prompts.parquet")
    return ["generate", "--prompts", str(p), "--model", str(model or tiny_generator()),
            "--out", str(out or tmp / "store"), "--no-qc", "--steps", "2", "--batch-size", "4",
            "--device", "cpu", "--no-progress", *extra]


def corrupt_generator(tmp: Path) -> Path:
    import shutil

    model = shutil.copytree(tiny_generator(), tmp / "generator")
    f = model / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a download cut in half
    return model


def _long(n: int) -> list[str]:
    df = generation_prompts(n)
    return [p + " Lines and tubes unchanged in position" * (16 if i == 1 else 0)
            for i, p in enumerate(df["prompt"])]


def _generated(n: int):
    def check(tmp: Path, res) -> None:
        assert_store_consistent(tmp / "store", accepted=n)
    return check


GENERATE_CASES = [
    Case("generate-age-out-of-range",
         lambda t: generate_args(t, generation_prompts(4, age=[40.0, -5.0, 200.0, 50.0])),
         ("prompts.parquet", "'age'", "-5.0", "200.0", "1 (q0001)", "2 (q0002)")),
    Case("generate-prompt-contradicts-row",
         lambda t: generate_args(t, generation_prompts(4, sex=["F", "F", "F", "M"])),
         ("prompts.parquet", "row 1 (q0001)", "sex 'M' vs column 'F'")),
    Case("generate-long-prompt",
         lambda t: generate_args(t, generation_prompts(4, prompt=_long(4))),
         ("prompts.parquet", "1 prompt(s) are longer than 77", "q0001", "--allow-long-prompts")),
    Case("generate-long-prompt-allowed",
         lambda t: generate_args(t, generation_prompts(4, prompt=_long(4)), "--allow-long-prompts"),
         (), code=0, check=_generated(4)),
    Case("generate-corrupt-unet",
         lambda t: generate_args(t, generation_prompts(2), model=corrupt_generator(t)),
         ("model component unet", "diffusion_pytorch_model.safetensors", "corrupt")),
]


@pytest.mark.parametrize("case", GENERATE_CASES, ids=[c.name for c in GENERATE_CASES])
def test_generate_catalogue(case: Case, tmp_path):
    res = run_cli(case.setup(tmp_path))
    assert_one_line_error(res, case.names, case.code)
    if case.check is not None:
        case.check(tmp_path, res)


def assert_store_consistent(store: Path, accepted: int | None = None,
                            settled: bool = True) -> dict:
    """Every journal line whole, every accepted image on disk and readable, tables that
    agree, no temporaries; `settled`: no image the journal does not accept either (a
    stopped run may leave those of its last batch, which reopening removes). Returns
    the accepted records."""
    from rv2.data.imageio import load_image
    from rv2.data.manifest import read_manifest

    data = (store / "journal.jsonl").read_bytes()
    assert not data or data.endswith(b"\n")
    recs = [json.loads(x) for x in data.splitlines() if x.strip()]
    acc = {r["prompt_id"]: r for r in recs if r.get("qc_pass")}
    on_disk = {p.relative_to(store).as_posix() for p in (store / "images").rglob("*")
               if p.is_file()}
    wanted = {r["path"] for r in acc.values()}
    assert wanted <= on_disk
    assert on_disk == wanted or not settled
    for rel in wanted:
        assert load_image(store / rel).shape == (32, 32)
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name]
    if (store / "manifest.parquet").is_file():
        man = read_manifest(store / "manifest.parquet")
        assert set(man["prompt_id"]) <= set(acc)
    if accepted is not None:
        assert len(acc) == accepted
        assert len(read_manifest(store / "manifest.parquet")) == accepted
    return acc


def test_temporaries_are_removed_when_the_store_reopens(tmp_path):
    args = generate_args(tmp_path, generation_prompts(4))
    assert_one_line_error(run_cli(args), code=0)
    store = tmp_path / "store"
    left = [store / f".manifest.sidecar.json.tmp-{99999}", store / ".journal.jsonl.tmp-4242",
            store / "images" / "s00000" / ".syn-q0000.png.tmp-4242"]
    for p in left:
        p.write_bytes(b"half")
    assert_one_line_error(run_cli(args), code=0)  # the same command: nothing left to do
    assert not any(p.exists() for p in left)
    assert_store_consistent(store, accepted=4)


# ------------------------------------------------------------------ mounts


def _mount(args: list[str], target: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here")
    r = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}): {r.stderr.strip() or r.returncode}; "
                    "needs root or CAP_SYS_ADMIN")


def _umount(target: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(target)], capture_output=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 48 KiB tmpfs: room for a few of the tiny images and journal lines, then ENOSPC."""
    target = tmp_path / "small"
    target.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=48k", "tmpfs"], target)
    yield target
    _umount(target)


@pytest.fixture
def read_only_dir(tmp_path):
    src, target = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    target.mkdir()
    _mount(["--bind", "-o", "ro", str(src)], target)
    yield target
    _umount(target)


def test_read_only_out_is_refused_before_any_model_loads(tmp_path, read_only_dir):
    # A corrupt model: were it loaded (or even checked) first, its error would show.
    args = generate_args(tmp_path, generation_prompts(2), model=corrupt_generator(tmp_path),
                         out=read_only_dir / "store")
    err = assert_one_line_error(run_cli(args), (str(read_only_dir / "store"), "--out",
                                                "Read-only file system"))
    assert "unet" not in err


def test_disk_full_mid_run_leaves_a_resumable_store(tmp_path, small_tmpfs):
    import subprocess

    args = generate_args(tmp_path, generation_prompts(24), out=small_tmpfs / "store")
    res = run_cli(args)
    err = assert_one_line_error(res, ("disk full while writing", str(small_tmpfs / "store"),
                                      "is consistent",
                                      "free space and rerun the same command to resume"), code=1)
    assert str(small_tmpfs) in err.split(";")[0]
    done = assert_store_consistent(small_tmpfs / "store", settled=False)
    assert len(done) < 24
    r = subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], capture_output=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run_cli(args), code=0)  # the same command resumes
    after = assert_store_consistent(small_tmpfs / "store", accepted=24)
    for pid, rec in done.items():  # what was kept is kept
        assert after[pid]["path"] == rec["path"] and after[pid]["seed"] == rec["seed"]


def test_sigterm_finishes_the_batch_and_exits_143(tmp_path):
    """A real process and a real signal: exit 143, one line on how to resume, a
    consistent store, and the same command then completes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # 96 prompts: about 12 s of generation left when the first is journaled; with 48 a
    # fresh clone's run on a machine loaded with four other test runs finished them all
    # before the signal came
    n = 96
    args = generate_args(tmp_path, generation_prompts(n), "--batch-size", "1")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "rv2.cli", *args]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    journal = store / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("Error: stopped by SIGTERM") and "rerun the same command" in last, err
    assert str(store) in last
    done = assert_store_consistent(store, settled=False)
    assert 0 < len(done) < n
    assert len(pd.read_parquet(store / "manifest.parquet")) == len(done)  # tables written
    assert_one_line_error(run_cli(args), code=0)  # the same command resumes (in-process)
    after = assert_store_consistent(store, accepted=n)
    assert all(after[pid]["path"] == rec["path"] for pid, rec in done.items())


# inprocess (or native): the real-process test
@pytest.mark.parametrize("executor", ["python", "python --speculate --slots 4"])
def test_sigterm_in_process_with_each_executor(tmp_path, executor):
    """The stop rule holds for the pipeline executors too (their result callback runs on
    a writer thread): exit 143, a consistent store, and the same command completes it;
    with speculation, the attempts held or in flight at the stop leave no trace."""
    import os
    import signal
    import threading
    import time

    args = generate_args(tmp_path, generation_prompts(24), "--batch-size", "1", "--executor",
                         *executor.split())
    journal = tmp_path / "store" / "journal.jsonl"

    def kill_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if journal.is_file() and journal.stat().st_size > 0:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the run (main thread)
                return
            time.sleep(0.02)

    t = threading.Thread(target=kill_when_started, daemon=True)
    t.start()
    res = run_cli(args)
    t.join()
    err = assert_one_line_error(res, ("stopped by SIGTERM", "rerun the same command"), code=143)
    assert str(tmp_path / "store") in err
    done = assert_store_consistent(tmp_path / "store", settled=False)
    assert 0 < len(done) < 24
    assert_one_line_error(run_cli(args), code=0)
    assert_store_consistent(tmp_path / "store", accepted=24)
