"""One error base (one line, exit 2 for bad input; tracebacks for bugs), one atomic
write, one JSON encoder, one place for RV2_* variables."""
from __future__ import annotations

import json
import math
import os

import click
import numpy as np
import pytest
from click.testing import CliRunner
from rv2 import cli, envs
from rv2.errors import MissingInputError, RV2Error, UserError, one_line
from rv2.files import atomic_path, atomic_write_text, clean_temporaries, dumps, plain


def test_user_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "notparquet.parquet"
    bad.write_bytes(b"PAR1 but not really")
    res = CliRunner().invoke(cli.main, ["data", "stats", str(bad)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "notparquet.parquet" in lines[0]
    assert "Traceback" not in res.output


def test_bad_config_override_is_one_line(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"")
    res = CliRunner().invoke(cli.main, ["prompts", "build", "--manifest", str(p), "--out",
                                        str(tmp_path / "o.parquet"), "--set", "nope=1"])
    assert res.exit_code == 2, res.output
    assert "nope" in res.output and len([x for x in res.output.splitlines() if x.strip()]) == 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    @click.command("boom")
    def boom():
        raise KeyError("internal")

    monkeypatch.setitem(cli.COMMANDS, "boom", ("tests:boom", "a bug"))
    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda self, ctx, name: boom)
    res = CliRunner().invoke(cli.main, ["boom"])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)


def test_error_hierarchy_and_one_line():
    assert issubclass(UserError, RV2Error) and issubclass(UserError, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, UserError)
    assert one_line(UserError("a\n  b\n\nc")) == "a b c"
    from rv2.classify.model_dir import ModelDirError
    from rv2.config import ConfigError
    from rv2.data.manifest import ManifestError
    from rv2.evaluate.io import EvaluationInputError
    from rv2.weights import MissingWeightsError

    for e in (ConfigError, ManifestError, EvaluationInputError, ModelDirError, MissingWeightsError):
        assert issubclass(e, UserError), e


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "sub" / "t.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["t.json"]  # temporary removed
    (target.parent / f".t.json.tmp-{os.getpid() + 1}").write_text("left by a killed writer")
    assert [p.name for p in clean_temporaries(target.parent)] == [f".t.json.tmp-{os.getpid() + 1}"]
    assert [p.name for p in target.parent.iterdir()] == ["t.json"]


def test_json_of_numpy_values():
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(2),
           "nan": float("nan"), 1: "key"}
    back = json.loads(dumps(obj))
    assert back == {"i": 3, "f": 0.5, "b": True, "a": [0, 1], "nan": back["nan"], "1": "key"}
    assert math.isnan(back["nan"])
    assert plain({"x": [np.float64("inf"), np.int32(1)]}, nan_to_none=True) == {"x": [None, 1]}


def test_envs_read_in_one_place(monkeypatch, tmp_path):
    monkeypatch.setenv("RV2_WEIGHTS_DIR", f"{tmp_path}{os.pathsep}{tmp_path / 'b'}")
    monkeypatch.setenv("RV2_CACHE_DIR", str(tmp_path / "cache"))
    assert envs.weights_dirs() == [tmp_path, tmp_path / "b"]
    assert envs.cache_dir() == tmp_path / "cache"
    from rv2.weights import weight_dirs

    assert weight_dirs()[:3] == [tmp_path, tmp_path / "b", tmp_path / "cache" / "weights"]
    monkeypatch.setenv("RV2_RUN_SLOW", "0")
    assert not envs.run_slow()
    assert set(envs.snapshot()) >= {"RV2_WEIGHTS_DIR", "RV2_CACHE_DIR"}
