"""kill -9 a real `rv2 generate` run, run the same command again: nothing lost or duplicated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from gen_helpers import constant_bundle, prompts_table, tiny

REPO = Path(__file__).resolve().parents[2]


def _journal_lines(p: Path) -> int:
    try:
        return p.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _native_scheduler_built() -> bool:
    from rv2 import _native

    return _native.features()["run_pipeline"]


_NATIVE = pytest.mark.skipif(not _native_scheduler_built(), reason="rv2._C has no pipeline scheduler")


@pytest.mark.parametrize("executor", ["inprocess", pytest.param("native", marks=_NATIVE),
                                      pytest.param("native --speculate --slots 16", marks=_NATIVE)])
def test_kill_9_then_resume(tmp_path, executor):
    """Killed mid-run and resumed: nothing lost, nothing journaled twice. With speculation
    (more slots than prompts, so the idle ones start second attempts at once) the passing
    prompts' second attempts are started and then dropped: none may reach the journal,
    before the kill or after."""
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "model")
    bundle = constant_bundle(tmp_path / "qc")  # always: female, White, 50 years
    df = prompts_table(12, seed=3)
    df.to_parquet(tmp_path / "prompts.parquet")
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "rv2.cli", "generate", "--prompts", str(tmp_path / "prompts.parquet"),
           "--model", str(model), "--out", str(out), "--qc-weights-dir", str(bundle),
           "--batch-size", "2", "--max-attempts", "2", "--steps", "5", "--device", "cpu",
           "--no-progress", "--set", "store.shard_size=4", "--executor", *executor.split()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "python")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        n = _journal_lines(out / "journal.jsonl")
        if n >= 4:
            proc.send_signal(signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.01)
    proc.wait(30)
    if killed_at is None:
        pytest.fail(f"run ended before it could be killed: rc={proc.returncode} "
                    f"{proc.stderr.read().decode()[-2000:]}")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    man = pd.read_parquet(out / "manifest.parquet")
    log = pd.read_parquet(out / "qc_log.parquet")
    # the constant QC decides from the prompt alone: which prompts must be accepted is known
    expect = set(df["prompt_id"][(df["sex"] == "F") & df["race"].isin(["White", "Hispanic"])
                                 & ((df["age"] - 50).abs() <= 16)])
    assert expect, "test table must contain passable prompts"
    assert set(man["prompt_id"]) == expect
    assert man["image_id"].is_unique and (man["attempt"] == 0).all()
    assert not log.duplicated(["prompt_id", "attempt"]).any()
    counts = log.groupby("prompt_id").size()
    assert set(counts.index) == set(df["prompt_id"])
    assert all(counts[p] == (1 if p in expect else 2) for p in counts.index)
    files = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert files == set(man["path"])
    assert all(len(list(d.iterdir())) <= 4 for d in (out / "images").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == len(expect) and summary["failed"] == 12 - len(expect)
    assert summary["attempts_histogram"]["failed"] == 12 - len(expect)
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert len(journal) == len(log)
    # the second run resumed: it did not redo the attempts journaled before the kill
    assert summary["this_run"]["attempts"] <= len(journal) - killed_at
    if "--speculate" in executor:
        sch = summary["this_run"]["scheduler"]
        assert sch["speculated"] > 0
        assert sch["speculated"] == sch["speculation_kept"] + sch["speculation_dropped"]
