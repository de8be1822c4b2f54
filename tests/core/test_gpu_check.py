"""tools/gpu_check.sh and tools/gpu_wheelhouse.py, without a GPU: the dry run end to end,
the step runner's time limits, the wheelhouse's tag, version and size checks."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
MiB = 2 ** 20


def _load(name: str):
    sys.path.insert(0, str(TOOLS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


wh = _load("gpu_wheelhouse")
gc = _load("gpu_check")


# --------------------------------------------------------------------------- the dry run

def test_dry_run_writes_both_summaries(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO / "python"))
    r = subprocess.run(["bash", str(TOOLS / "gpu_check.sh"), "--dry-run", "--skip-wheelhouse",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=1200,
                       check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log",
                                                      "gpu_check.md", "junit.xml",
                                                      "junit_compile.xml"]
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["mode"] == "dry-run" and s["ok"] and s["wall_s"] <= s["budget_s"]
    steps = {st["name"]: st for st in s["steps"]}
    assert list(steps)[:4] == ["wheels", "card", "build", "tests"]
    assert {"bench_generate", "bench_classify", "bench_engines"} <= set(steps)
    assert s["benchmarks"]["bench_engines"]["rows"][0]["backend"] == "onnxruntime"
    assert list(steps)[-1] == "tests_compile"  # engine compiles run after the figures
    assert steps["wheels"]["status"] == "skipped" and "--skip-wheelhouse" in steps["wheels"]["note"]
    for name, st in steps.items():
        if name != "wheels":
            assert st["status"] == "ok" and 0 < st["wall_s"] <= st["limit_s"], st
    # card: versions and a measured matmul rate; build: the cpu target, loaded and checked
    assert s["machine"]["torch"] and s["machine"]["matmul"]["tflops"] > 0
    assert s["build"]["target"] == "cpu" and s["build"]["problems"] == []
    # every gpu-marked test was collected and skipped for want of a GPU
    t = s["tests"]
    assert t["skipped"] >= 8 and t["passed"] == t["failed"] == 0
    assert all("CUDA" in reason for reason in t["skips"])
    gen = s["benchmarks"]["bench_generate"]
    assert gen["rows"][0]["ratio"] == 1.0  # the authors' approach is the baseline
    assert all(r["images_per_s"] > 0 and 0 < r["of_fp32_matmul"] for r in gen["rows"])
    assert gen["flops"]["tflop_per_image"] > 0 and gen["flops"]["unet_calls"] == 3
    assert len(gen["rows"]) == 3 and "native" in gen["rows"][2]["approach"]
    cls = s["benchmarks"]["bench_classify"]
    assert {r["row"] for r in cls["rows"]} == {"train step", "predict step", "train pipeline",
                                              "predict pipeline"}
    srv = s["benchmarks"]["bench_serve"]  # by_default False: on a GPU it runs when named
    assert {(r["server"], r["proto"], r["conc"]) for r in srv["rows"]} >= {("grpc-floor", "grpc", 1),
                                                                          ("trivial", "http", 1),
                                                                          ("trivial", "grpc", 1)}
    assert all(r["errors"] == 0 and r["n"] > 0 for r in srv["rows"])
    md = (out / "gpu_check.md").read_text()
    for part in ("# rv2 GPU check (dry-run)", "## Steps", "## Tests marked gpu",
                 "### bench_generate", "### bench_classify", "| approach |"):
        assert part in md
    log = (out / "gpu_check.log").read_text()
    assert "== build" in log and "-- bench_classify: ok in" in log


def test_sd21_benchmark_model_counts_the_published_flops():
    """The GPU benchmark's SD 2.1-size components, built on the meta device (no memory,
    no GPU): their counted FLOPs are deployment.md's figures."""
    import torch

    bg = _load("bench_generate")
    comp = bg.sd21_components(torch.float16, "meta")
    assert sum(p.numel() for p in comp.unet.parameters()) == 865_910_724
    f = bg.flops_per_image(comp, 75, 4.0, "meta")
    g = f["per_forward_gflop"]
    assert f["unet_calls"] == 76
    assert abs(g["unet"] - bg.UNET_GFLOP_SD21) < 1 and abs(g["vae_decode"] - bg.VAE_DEC_GFLOP_SD21) < 1
    assert abs(g["text_encoder"] - bg.CLIP_GFLOP_SD21) < 0.5
    assert 124 < f["tflop_per_image"] < 126


# --------------------------------------------------------------------------- the step runner

def _alive(pid: int) -> bool:
    """Running or sleeping; a killed process left unreaped (a zombie) is not alive."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_step_over_its_limit_is_killed_with_its_children_and_the_next_runs():
    # the step starts a grandchild that would outlive a plain kill of its parent
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('child', p.pid, flush=True); time.sleep(60)")
    log = io.StringIO()
    slow = gc.run_step(gc.Step("slow", [sys.executable, "-c", code], limit_s=3), log, dict(os.environ))
    assert slow.status == "timeout" and 3 <= slow.wall_s < 15 and "3 s limit" in slow.note
    child = int(next(line.split()[1] for line in slow.tail if line.startswith("child")))
    assert not _alive(child)
    bad = gc.run_step(gc.Step("bad", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                              limit_s=30), log, dict(os.environ))
    assert bad.status == "failed" and bad.rc == 3 and bad.tail == ["boom"]
    assert "-- slow: timeout" in log.getvalue() and "-- bad: failed" in log.getvalue()


def test_limits_are_cut_to_the_budget_left():
    step = gc.Step("x", ["true"], limit_s=100)
    assert gc.schedule(step, left=500, only=None) == "run" and step.limit_s == 100
    assert gc.schedule(step, left=40, only=None) == "run" and step.limit_s == 40
    assert "cut" in step.note
    late = gc.Step("y", ["true"], limit_s=100)
    assert gc.schedule(late, left=gc.MIN_STEP_S - 1, only=None) == "skip"
    assert "budget spent" in late.note
    other = gc.Step("z", ["true"], limit_s=100)
    assert gc.schedule(other, left=500, only={"tests"}) == "skip" and "--only" in other.note
    card = gc.Step("card", ["true"], limit_s=60)
    assert gc.schedule(card, left=500, only={"tests"}) == "run"  # a fresh machine needs it


def test_unknown_only_step_is_refused(tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the work folder is made
    assert gc.main(["--dry-run", "--skip-wheelhouse", "--out", str(tmp_path), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--only nope: no such step" in err and "bench_generate" in err
    assert list(scratch.iterdir()) == []  # the refusal leaves no work folder behind


def test_benchmarks_declare_how_the_check_runs_them(tmp_path):
    specs = dict(gc.bench_specs())
    for name in ("bench_generate", "bench_classify"):
        for mode in ("gpu", "dry"):
            assert "{json}" in specs[name][mode]
    assert "cuda" in specs["bench_generate"]["gpu"] and "sd21" in specs["bench_generate"]["gpu"]
    assert [n for n, _ in gc.bench_specs()].index("bench_generate") == 0
    (tmp_path / "bench_bad.py").write_text("GPU_CHECK = {'gpu': '--device cuda', 'dry': []}\n")
    with pytest.raises(ValueError, match="bench_bad.py: GPU_CHECK\\['gpu'\\]"):
        gc.bench_specs(tmp_path)
    (tmp_path / "bench_bad.py").write_text("GPU_CHECK = {'gpu': [], 'dry': [], 'order': 5}\n")
    (tmp_path / "bench_none.py").write_text("print('no GPU_CHECK here')\n")
    assert [n for n, _ in gc.bench_specs(tmp_path)] == ["bench_bad"]


def test_markdown_and_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.a" name="test_bad" time="0.1">'
        '<failure message="AssertionError: 0.2 &gt; 0.01&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.b" name="test_skip" time="0"><skipped message="needs a CUDA GPU"/>'
        '</testcase></testsuite></testsuites>')
    t = gc.read_junit(junit)
    assert (t["passed"], t["failed"], t["skipped"]) == (1, 1, 1)
    assert t["failures"] == [{"test": "tests.a::test_bad", "message": "AssertionError: 0.2 > 0.01"}]
    summary = {"mode": "gpu", "started_utc": "x", "wall_s": 1.0, "budget_s": 480, "ok": False,
               "machine": {"card": "NVIDIA H200", "matmul": {"dtype": "bf16", "n": 8192, "tflops": 790.5}},
               "build": {"target": "cuda", "cuda_archs": "90-real"},
               "steps": [{"name": "tests", "status": "failed", "wall_s": 2.0, "limit_s": 150,
                          "note": "", "tail": ["E   boom"]}],
               "tests": t,
               "benchmarks": {"bench_x": {"title": "T", "rows": [{"a": 1, "b|c": None, "d": 0.123456}],
                                          "notes": ["n1"]},
                              "bench_y": {"stdout_tail": ["plain output"]}}}
    md = gc.markdown(summary)
    assert "| card | NVIDIA H200 |" in md and "| bf16 matmul TFLOP/s (n=8192) | 790.5 |" in md
    assert "SOME STEPS FAILED" in md and "E   boom" in md
    assert "- FAILED tests.a::test_bad: AssertionError: 0.2 > 0.01" in md
    assert "| a | b/c | d |" in md.replace("b|c", "b/c") and "| 1 |  | 0.1235 |" in md
    assert "plain output" in md and "- n1" in md


# --------------------------------------------------------------------------- the wheelhouse

def _fake(dest: Path, sizes: dict[str, int]) -> Path:
    """Sparse files named as wheels: their size without the disk."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        with open(dest / name, "wb") as f:
            f.truncate(size)
    return dest


PINS = [wh.Pin("diffusers", "0.42.1", False), wh.Pin("wcwidth", "0.9.4", False),
        wh.Pin("torchxrayvision", "1.5.7", True)]
GOOD = {"diffusers-0.42.1-py3-none-any.whl": 6 * MiB,
        "wcwidth-0.9.4-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl": MiB,
        "torchxrayvision-1.5.7-py3-none-any.whl": 28 * MiB}


def test_wheelhouse_fits_or_fails_with_the_sizes(tmp_path):
    d = _fake(tmp_path / "whl", GOOD)
    rows = wh.check(d, PINS, tree=20 * MiB)
    assert sum(b for _, b in rows) == 35 * MiB
    with pytest.raises(wh.WheelhouseError) as e:
        wh.check(d, PINS, tree=30 * MiB)
    msg = str(e.value)
    assert "35.00 MiB" in msg and "30.00 MiB" in msg and "65.00 MiB together" in msg
    assert "by 1.00 MiB" in msg and "--without torchxrayvision" in msg


def test_wheelhouse_cli_reports_sizes_and_exit_code(tmp_path, capsys):
    d = _fake(tmp_path / "whl", GOOD)
    req = tmp_path / "req.txt"
    req.write_text("diffusers==0.42.1  # x\nwcwidth==0.9.4\ntorchxrayvision==1.5.7 # big # optional\n")
    argv = ["--check", "--dest", str(d), "--requirements", str(req)]
    assert wh.main(argv + ["--tree-bytes", str(10 * MiB)]) == 0
    out = capsys.readouterr().out
    assert "3 wheels, 35.00 MiB" in out and "45.00 MiB of 64 MiB (19.00 MiB left)" in out
    assert wh.main(argv + ["--tree-bytes", str(40 * MiB)]) == 1
    assert "over the 64.00 MiB one device call carries" in capsys.readouterr().err
    # an optional pin left out must not travel: its wheel is then reported
    assert wh.main(argv + ["--tree-bytes", "0", "--without", "torchxrayvision"]) == 1
    assert "not pinned" in capsys.readouterr().err
    assert wh.main(argv + ["--tree-bytes", "0", "--without", "diffusers"]) == 1
    assert "only optional pins can be left out (torchxrayvision)" in capsys.readouterr().err


@pytest.mark.parametrize("name, problem", [
    ("wcwidth-0.9.4-cp311-cp311-manylinux_2_17_x86_64.whl", "does not install"),
    ("wcwidth-0.9.4-cp312-cp312-win_amd64.whl", "does not install"),
    ("wcwidth-0.9.4-cp312-cp312-manylinux_2_17_aarch64.whl", "does not install"),
    ("wcwidth-0.9.4-cp312-cp312-manylinux_2_40_x86_64.whl", "does not install"),
    ("wcwidth-0.9.3-py3-none-any.whl", "two versions of wcwidth"),
    ("numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl", "not pinned"),
    ("not-a-wheel.whl", "not a wheel file name"),
])
def test_wheelhouse_refuses_what_would_not_install(tmp_path, name, problem):
    d = _fake(tmp_path / "whl", {**GOOD, name: 1000})
    with pytest.raises(wh.WheelhouseError, match=problem):
        wh.check(d, PINS, tree=0)


def test_wheelhouse_names_what_is_missing(tmp_path):
    d = _fake(tmp_path / "whl", {k: v for k, v in GOOD.items() if not k.startswith("diffusers")})
    with pytest.raises(wh.WheelhouseError, match="lacks diffusers: run `make gpu-wheelhouse`"):
        wh.check(d, PINS, tree=0)


def test_download_removes_unpinned_wheels_and_skips_pip_when_complete(tmp_path, capsys, monkeypatch):
    d = _fake(tmp_path / "whl", {**GOOD, "wcwidth-0.9.3-py3-none-any.whl": 10})
    monkeypatch.setattr(wh.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    wh.download(d, PINS)
    out = capsys.readouterr().out
    assert "removing wcwidth-0.9.3-py3-none-any.whl" in out and "all 3 pinned wheels already" in out
    assert sorted(p.name for p in d.iterdir()) == sorted(GOOD)


def test_requirements_file_pins_exact_versions_that_install_there(tmp_path):
    pins = wh.read_pins()
    assert {"diffusers", "open-clip-torch", "pydicom", "torchxrayvision"} <= {p.name for p in pins}
    assert [p.name for p in pins if p.optional] == ["torchxrayvision"]
    bad = tmp_path / "r.txt"
    bad.write_text("diffusers>=0.40\n")
    with pytest.raises(wh.WheelhouseError, match="r.txt:1: 'diffusers>=0.40' is not NAME==VERSION"):
        wh.read_pins(bad)


def test_tree_size_counts_what_travels(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.whl/\n/build/\n")
    (repo / "a.py").write_bytes(b"x" * 1000)            # untracked, not ignored: travels
    (repo / "build").mkdir()
    (repo / "build" / "big.o").write_bytes(b"x" * 5000)  # ignored: stays
    (repo / "shared").mkdir()
    (repo / "shared" / "ref.md").write_bytes(b"x" * 300)  # shared/ inside the checkout: travels
    assert wh.tree_bytes(repo) == 1000 + len("/.whl/\n/build/\n") + 300


def test_a_benchmark_off_by_default_runs_on_the_gpu_only_when_named(tmp_path):
    """bench_engines compiles SD 2.1-size engines for minutes: on the GPU it is a second call
    (--only bench_engines); the dry run always runs its CPU half."""
    import argparse

    specs = dict(gc.bench_specs())
    assert specs["bench_engines"]["by_default"] is False
    assert "--whole" in specs["bench_engines"]["gpu"] and "{json}" in specs["bench_engines"]["dry"]

    def steps(**kw):
        args = argparse.Namespace(**{"dry_run": False, "skip_wheelhouse": False, "only": None,
                                     "wheels": str(tmp_path), "out": str(tmp_path), **kw})
        return {s.name: s for s in gc.plan(args, tmp_path, tmp_path / "site")}

    plain = steps()["bench_engines"]
    assert plain.cmd == [] and "--only bench_engines" in plain.note
    assert gc.schedule(plain, left=500, only=None) == "skip"
    named = steps(only="bench_engines")["bench_engines"]
    assert named.cmd and "--whole" in named.cmd
    assert gc.schedule(named, left=500, only={"bench_engines"}) == "run"
    assert steps(dry_run=True)["bench_engines"].cmd  # the dry run: every time
    (tmp_path / "bench_x.py").write_text("GPU_CHECK = {'gpu': [], 'dry': [], 'by_default': 0}\n")
    with pytest.raises(ValueError, match="by_default"):
        gc.bench_specs(tmp_path)
