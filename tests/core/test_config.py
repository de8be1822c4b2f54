import dataclasses
import json
from pathlib import Path

import pytest
from rv2.config import (
    Config,
    ConfigError,
    hash_input,
    meta_path_for,
    read_artifact_meta,
    write_artifact_meta,
)


@dataclasses.dataclass
class Sampler(Config):
    steps: int = 75
    guidance: float = 4.0
    scheduler: str = "pndm"


@dataclasses.dataclass
class Job(Config):
    VERSION = 2
    name: str = "gen"
    sampler: Sampler = dataclasses.field(default_factory=Sampler)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    out: Path | None = None


def test_yaml_toml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: a\nsampler:\n  steps: 50\n")
    t = tmp_path / "c.toml"
    t.write_text('name = "b"\n[sampler]\nguidance = 3\n')
    a = Job.load(y)
    b = Job.load(t, overrides=["sampler.steps=10", "seeds=[1, 2]", "out=/x"])
    assert (a.name, a.sampler.steps, a.sampler.guidance) == ("a", 50, 4.0)
    assert (b.name, b.sampler.steps, b.sampler.guidance, b.seeds) == ("b", 10, 3.0, [1, 2])
    assert b.out == Path("/x") and isinstance(b.sampler.guidance, float)
    # YAML reads 1e-5 as a string; float fields still take it, in files and overrides
    y.write_text("sampler:\n  guidance: 1e-5\n")
    assert Job.load(y).sampler.guidance == 1e-5
    assert Job().override(["sampler.guidance=2e-3"]).sampler.guidance == 2e-3
    with pytest.raises(ConfigError, match="expected a number"):
        Job().override(["sampler.guidance=fast"])


def test_round_trip_and_version(tmp_path):
    cfg = Job().override(["sampler.guidance=3.5"])
    p = cfg.save(tmp_path / "job.yaml")
    again = Job.load(p)
    assert again == cfg
    data = cfg.to_dict()
    assert data["config_version"] == 2 and data["config_class"] == "Job"
    data["config_version"] = 3
    with pytest.raises(ConfigError, match="newer"):
        Job.from_dict(data)


@pytest.mark.parametrize("bad, match", [
    (["sampler.stepz=3"], "unknown field 'stepz'"),
    (["sampler.steps=abc"], "expected an integer"),
    (["name.x=1"], "not a section"),
    (["steps"], "key.sub=value"),
])
def test_bad_overrides_name_the_problem(bad, match):
    with pytest.raises(ConfigError, match=match):
        Job().override(bad)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Job.load(tmp_path / "nope.yaml")
    f = tmp_path / "x.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Job.load(f)
    f.write_text("name: a\nwhat: 1\n")
    with pytest.raises(ConfigError, match="unknown field"):
        Job.load(f)


def test_artifact_meta_for_files_and_folders(tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text("a,b\n1,2\n")
    art = tmp_path / "out.parquet"
    art.write_bytes(b"x")
    mp = write_artifact_meta(art, Job(), inputs=[inp], extra={"rows": 1})
    assert mp == meta_path_for(art) and mp.name == "out.parquet.rv2.json"
    meta = read_artifact_meta(art)
    assert meta["config"]["config_class"] == "Job" and meta["rows"] == 1
    assert meta["inputs"][0]["sha256"] == hash_input(inp)["sha256"]
    import hashlib

    assert meta["inputs"][0]["sha256"] == hashlib.sha256(inp.read_bytes()).hexdigest()
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "w.bin").write_bytes(b"123")
    write_artifact_meta(d, {"lr": 1e-4}, inputs=[d])
    meta = json.loads((d / "rv2_meta.json").read_text())
    assert meta["config"] == {"lr": 1e-4} and meta["inputs"][0]["kind"] == "dir"
    h1 = hash_input(d)["sha256"]
    (d / "w.bin").write_bytes(b"124")
    assert hash_input(d)["sha256"] != h1
