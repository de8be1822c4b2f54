#!/usr/bin/env python
"""One call proves rv2's GPU paths on a lent GPU machine (run through tools/gpu_check.sh).

    tools/gpu_check.sh [--out DIR] [--only STEP,...] [--budget-s 480]          # on the GPU machine
    tools/gpu_check.sh --dry-run [--skip-wheelhouse] [--out DIR]              # here, CPU halves

Steps, in order, each in its own process group with its own time limit (clipped to
what is left of the total budget); a step that fails or runs out of time is recorded
and the next one runs:

  wheels   GPU: install .whl/ into a target folder put on PYTHONPATH.
           dry-run: `tools/gpu_wheelhouse.py` (download what is missing, check size), then
           the same install into a temporary folder.
  card     card name, driver, CUDA, torch and package versions; the bf16 matmul rate
           (8192^3 products) on the GPU, an fp32 one on the CPU in a dry run.
  build    rv2._C for the cuda target in place (GPU) or the cpu target into a scratch
           folder (dry-run), then loaded and checked (target, archs, to_uint8 parity).
  tests    `pytest -m "gpu and not compile" tests` (in a dry run they are collected and skip).
  bench_*  every tools/bench_*.py that declares a GPU_CHECK dict (read with ast, not
           imported): its "gpu" or "dry" arguments, "{json}" replaced by a file the
           benchmark writes its table to ({"title", "rows", "notes"}). On the GPU a spec
           with "by_default": False runs only when --only names it (a second call).
  tests_compile  `pytest -m "gpu and compile" tests`: the tests that compile engines
           (minutes), last so that they cannot cost the figures.

Writes gpu_check.json, gpu_check.md, gpu_check.log, junit.xml and junit_compile.xml to DIR (default $OUT,
else build/gpu-check). Exit 0 when every step that ran passed.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import gpu_wheelhouse

BUDGET_S = 480        # 8 minutes: one retry still fits in the 15 minutes of device time
DRY_BUDGET_S = 1500   # the CPU halves on a shared 2-core machine are slower than the GPU run
MIN_STEP_S = 10       # a step with less than this left of the budget is skipped
TAIL_LINES = 25
# Fixed steps: (name, GPU limit s, dry-run limit s)
FIXED_STEPS = (("wheels", 90, 300), ("card", 60, 120), ("build", 150, 600), ("tests", 150, 300),
               ("tests_compile", 240, 300))
JUNITS = ("junit.xml", "junit_compile.xml")  # the tests and tests_compile steps' results
ALWAYS = ("wheels", "card")  # run even with --only: a fresh machine needs them
PACKAGES = ("torch", "torchvision", "triton", "diffusers", "transformers", "accelerate",
            "huggingface-hub", "safetensors", "open-clip-torch", "torchxrayvision", "pydicom",
            "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "nvidia-dali-cuda130",
            "pytest")


@dataclass
class Step:
    name: str
    cmd: list[str]
    limit_s: float
    env: dict = field(default_factory=dict)
    status: str = "pending"          # ok | failed | timeout | skipped
    rc: int | None = None
    wall_s: float = 0.0
    note: str = ""
    tail: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- step runner

def run_step(step: Step, log, env: dict) -> Step:
    """Runs step.cmd in its own process group, output to stdout and `log`; kills the
    whole group at step.limit_s. Sets status, rc, wall_s and the output tail."""
    print(f"\n== {step.name} (limit {step.limit_s:.0f} s): {' '.join(step.cmd)}", flush=True)
    log.write(f"\n== {step.name} (limit {step.limit_s:.0f} s): {' '.join(step.cmd)}\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen(step.cmd, cwd=REPO, env={**env, **step.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    tail: list[str] = []

    def pump():
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-TAIL_LINES]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        step.rc = proc.wait(timeout=step.limit_s)
        step.status = "ok" if step.rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        step.rc, step.status = proc.returncode, "timeout"
        step.note = f"stopped at its {step.limit_s:.0f} s limit"
    reader.join(timeout=5)
    step.wall_s = round(time.perf_counter() - t0, 2)
    step.tail = list(tail)
    msg = f"-- {step.name}: {step.status} in {step.wall_s:.1f} s" + (f" ({step.note})" if step.note else "")
    print(msg, flush=True)
    log.write(msg + "\n")
    log.flush()
    return step


def schedule(step: Step, left: float, only: set[str] | None) -> str:
    """"run" (with the limit cut to the budget left) or "skip" (status and note set)."""
    if not step.cmd:
        reason = step.note or "nothing to run"
    elif only and step.name not in only and step.name not in ALWAYS:
        reason = "not in --only"
    elif left < MIN_STEP_S:
        reason = f"budget spent ({left:.0f} s left)"
    else:
        if left < step.limit_s:
            step.note = f"limit cut from {step.limit_s:.0f} s to the {left:.0f} s of budget left"
            step.limit_s = left
        return "run"
    step.status, step.note = "skipped", reason
    return "skip"


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- benchmarks

def bench_specs(tools: Path = TOOLS) -> list[tuple[str, dict]]:
    """(name, GPU_CHECK) of every tools/bench_*.py that declares one, by its "order"."""
    specs = []
    for path in sorted(tools.glob("bench_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                      else node.target if isinstance(node, ast.AnnAssign) else None)
            if isinstance(target, ast.Name) and target.id == "GPU_CHECK":
                spec = ast.literal_eval(node.value)
                _check_spec(path.name, spec)
                specs.append((path.stem, spec))
    return sorted(specs, key=lambda s: (s[1].get("order", 100), s[0]))


def _check_spec(name: str, spec) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{name}: GPU_CHECK must be a dict literal")
    for key in ("gpu", "dry"):
        if not (isinstance(spec.get(key), list) and all(isinstance(a, str) for a in spec[key])):
            raise ValueError(f"{name}: GPU_CHECK[{key!r}] must be a list of argument strings")
    if not isinstance(spec.get("by_default", True), bool):
        raise ValueError(f"{name}: GPU_CHECK['by_default'] must be True or False")
    for key in ("timeout_s", "dry_timeout_s", "order"):
        if key in spec and not isinstance(spec[key], (int, float)):
            raise ValueError(f"{name}: GPU_CHECK[{key!r}] must be a number")


# --------------------------------------------------------------------------- the internal steps

def probe(out_json: Path, device: str) -> int:
    """`card` step: versions and the measured matmul rate, written to out_json."""
    from importlib import metadata

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "packages": {}}
    for pkg in PACKAGES:
        try:
            info["packages"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    for cmd, key in ((["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                       "--format=csv,noheader"], "nvidia_smi"), (["nvcc", "--version"], "nvcc")):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            text = r.stdout.strip()
            info[key] = text.splitlines()[-1] if key == "nvcc" and text else text
        except (OSError, subprocess.TimeoutExpired) as exc:
            info[key] = f"unavailable ({type(exc).__name__})"
    if info["nvidia_smi"] and "," in info["nvidia_smi"]:
        info["driver"] = info["nvidia_smi"].splitlines()[0].split(",")[1].strip()
    import torch

    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["cuda_available"] = torch.cuda.is_available()
    if device == "cuda":
        if not torch.cuda.is_available():
            print("card: torch.cuda.is_available() is False on the GPU machine", file=sys.stderr)
            out_json.write_text(json.dumps(info, indent=2))
            return 1
        p = torch.cuda.get_device_properties(0)
        info.update(card=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2 ** 30, 1))
    else:
        info["card"] = f"none (CPU: {platform.processor() or platform.machine()})"
    from bench_generate import matmul_tflops

    dtype = "bf16" if device == "cuda" else "fp32"
    n = 8192 if device == "cuda" else 1024
    info["matmul"] = {"dtype": dtype, "n": n, "tflops": round(matmul_tflops(device, dtype, n), 2)}
    print(json.dumps(info, indent=2))
    out_json.write_text(json.dumps(info, indent=2))
    return 0


def build(target: str, out_json: Path, lib_dir: Path | None) -> int:
    """`build` step: rv2._C for `target` (in place, or into lib_dir), then load and check it."""
    import importlib.machinery
    import importlib.util
    import sysconfig

    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    env = dict(os.environ, RV2_TARGET_DEVICE=target,
               RV2_CMAKE_BUILD_DIR=str(REPO / "build" / f"gpu-check-{target}-{py}"))
    cmd = [sys.executable, "setup.py", "-q", "build_ext"]
    cmd += (["--inplace"] if lib_dir is None
            else ["--build-lib", str(lib_dir), "--build-temp", str(lib_dir.parent / "tmp")])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    build_s = time.perf_counter() - t0
    if r.returncode:
        print(f"build: setup.py build_ext failed (exit {r.returncode})", file=sys.stderr)
        return 1
    so = (lib_dir or REPO / "python") / "rv2" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    loader = importlib.machinery.ExtensionFileLoader("rv2._C", str(so))
    spec = importlib.util.spec_from_file_location("rv2._C", so, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    info = dict(mod.build_info())
    problems = []
    if info["target"] != target:
        problems.append(f"built target is {info['target']!r}, not {target!r}")
    if target == "cuda":
        if "90" not in info["cuda_archs"]:
            problems.append(f"no sm_90 code (cuda_archs {info['cuda_archs']!r})")
        if not hasattr(mod, "to_uint8_cuda"):
            problems.append("to_uint8_cuda is missing")
    import numpy as np

    os.environ["RV2_DISABLE_NATIVE"] = "1"  # the twin below must be the Python one
    sys.path.insert(0, str(REPO / "python"))
    from rv2._native import to_uint8_py

    x = np.random.default_rng(0).uniform(-0.1, 1.1, 10_000).astype(np.float32)
    if not np.array_equal(mod.to_uint8(x), to_uint8_py(x)):
        problems.append("to_uint8 differs from its Python twin")
    info.update(so=str(so.relative_to(REPO) if so.is_relative_to(REPO) else so),
                build_s=round(build_s, 1), problems=problems)
    print(json.dumps(info, indent=2))
    out_json.write_text(json.dumps(info, indent=2))
    for p in problems:
        print(f"build: {p}", file=sys.stderr)
    return 1 if problems else 0


# --------------------------------------------------------------------------- plan and summaries

def plan(args, work: Path, site: Path) -> list[Step]:
    py = sys.executable
    me = str(Path(__file__).resolve())
    gpu = not args.dry_run
    steps = []
    limits = {name: (g if gpu else d) for name, g, d in FIXED_STEPS}
    wheels = Path(args.wheels)
    if gpu:
        cmd = [py, me, "--install-wheels", str(wheels), "--site", str(site)]
    elif args.skip_wheelhouse:
        cmd = []
    else:
        cmd = [py, me, "--install-wheels", str(wheels), "--site", str(site), "--fetch"]
    steps.append(Step("wheels", cmd, limits["wheels"],
                      note="" if cmd else "--skip-wheelhouse"))
    steps.append(Step("card", [py, me, "--probe", str(work / "card.json"),
                               "--device", "cuda" if gpu else "cpu"], limits["card"]))
    # dry run: out of place (python/rv2/_C*.so may be loaded by the caller), into a folder
    # that persists under build/ so that a second run is a no-op build
    lib = REPO / "build" / f"gpu-check-cpu-py{sys.version_info[0]}{sys.version_info[1]}" / "lib"
    steps.append(Step("build", [py, me, "--build", "cuda" if gpu else "cpu", "--build-json",
                                str(work / "build.json")]
                      + ([] if gpu else ["--build-lib", str(lib)]), limits["build"]))
    tests_env = {"RV2_REQUIRE_NATIVE": "1"} if gpu else {}
    # a module that fails to import elsewhere (a package the image lacks) must not stop the rest
    def pytest_step(name: str, marks: str, junit: str, limit: float) -> Step:
        return Step(name, [py, "-m", "pytest", "-q", "-m", marks, "-p", "no:cacheprovider",
                           "--continue-on-collection-errors",
                           "--junitxml", str(Path(args.out) / junit), "tests"], limit, env=tests_env)

    # tests that compile engines take minutes: they run after the benchmarks, in their own
    # step, so that running out of time there costs neither the other tests nor the figures
    steps.append(pytest_step("tests", "gpu and not compile", JUNITS[0], limits["tests"]))
    only = set(args.only.split(",")) if args.only else set()
    for name, spec in bench_specs():
        argv = [a.replace("{json}", str(work / f"{name}.json")) for a in spec["gpu" if gpu else "dry"]]
        limit = spec.get("timeout_s", 120) if gpu else spec.get("dry_timeout_s", spec.get("timeout_s", 120))
        if gpu and not spec.get("by_default", True) and name not in only:
            steps.append(Step(name, [], float(limit), note=f"runs when named: --only {name}"))
            continue
        steps.append(Step(name, [py, str(TOOLS / f"{name}.py"), *argv], float(limit)))
    steps.append(pytest_step("tests_compile", "gpu and compile", JUNITS[1], limits["tests_compile"]))
    return steps


def install_wheels(wheels: Path, site: Path, fetch: bool) -> int:
    """`wheels` step: (dry-run: fetch and size-check first) then pip install --target."""
    if fetch:
        rc = gpu_wheelhouse.main(["--dest", str(wheels)])
        if rc:
            return rc
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"wheels: no wheels in {wheels}: run `make gpu-wheelhouse` in the checkout the "
              "device call sends and name .whl in the run's carry list", file=sys.stderr)
        return 1
    try:  # one version per package and tags that install here; size is not checked here
        gpu_wheelhouse.check(wheels, [p for p in gpu_wheelhouse.read_pins()
                                      if any(gpu_wheelhouse.parse_wheel(w.name)[0] == p.name
                                             for w in found)], tree=0, limit=1 << 62)
    except gpu_wheelhouse.WheelhouseError as exc:
        print(f"wheels: {exc}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--disable-pip-version-check",
                        "--target", str(site), *map(str, found)], check=False)
    print(f"wheels: installed {len(found)} wheels into {site} in {time.perf_counter() - t0:.1f} s "
          f"(exit {r.returncode})")
    return r.returncode


def read_junit(path: Path) -> dict:
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()
    res = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skips": {}}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            res["failed"] += 1
            res["failures"].append({"test": name,
                                    "message": (bad.get("message") or "").splitlines()[0][:300]
                                    if bad.get("message") else ""})
        elif skip is not None:
            res["skipped"] += 1
            reason = (skip.get("message") or "").strip()
            res["skips"][reason] = res["skips"].get(reason, 0) + 1
        else:
            res["passed"] += 1
    return res


def merge_junit(parts: list[dict]) -> dict:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    res = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skips": {}}
    for p in parts:
        for k in ("passed", "failed", "skipped"):
            res[k] += p[k]
        res["failures"] += p["failures"]
        for reason, n in p["skips"].items():
            res["skips"][reason] = res["skips"].get(reason, 0) + n
    return res


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _step_record(s: Step) -> dict:
    rec = {k: v for k, v in asdict(s).items() if k != "env"}
    if s.status in ("ok", "skipped"):
        del rec["tail"]  # the log has it; keep the tail only where it explains a failure
    return rec


def summarize(args, steps: list[Step], work: Path, started: str, wall: float) -> dict:
    benches = {}
    for s in steps:
        if s.name.startswith("bench_"):
            benches[s.name] = _load(work / f"{s.name}.json") or {"stdout_tail": s.tail}
    return {
        "mode": "dry-run" if args.dry_run else "gpu",
        "started_utc": started,
        "wall_s": round(wall, 1),
        "budget_s": args.budget_s,
        "ok": all(s.status in ("ok", "skipped") for s in steps),
        "machine": _load(work / "card.json") or {},
        "build": _load(work / "build.json") or {},
        "steps": [_step_record(s) for s in steps],
        "tests": merge_junit([read_junit(Path(args.out) / j) for j in JUNITS]),
        "benchmarks": benches,
    }


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def md_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def markdown(summary: dict) -> str:
    m = summary["machine"]
    mm = m.get("matmul") or {}
    verdict = "all steps passed" if summary["ok"] else "SOME STEPS FAILED"
    head = (f"Started {summary['started_utc']} UTC; {summary['wall_s']} s of a "
            f"{summary['budget_s']} s budget; {verdict}.")
    lines = [f"# rv2 GPU check ({summary['mode']})", "", head, "",
             "| machine | |", "| --- | --- |"]
    facts = [("card", m.get("card")), ("capability", m.get("capability")),
             ("memory GiB", m.get("memory_gib")), ("driver", m.get("driver")),
             ("CUDA (torch build)", m.get("torch_cuda")), ("nvcc", m.get("nvcc")),
             ("torch", m.get("torch")), ("python", m.get("python")), ("CPUs", m.get("cpu_count")),
             (f"{mm.get('dtype', '')} matmul TFLOP/s (n={mm.get('n')})", mm.get("tflops")),
             ("rv2._C", " ".join(f"{k}={summary['build'].get(k)}" for k in ("target", "cuda_archs",
                                                                               "cuda_version")
                                 if summary["build"]) or None)]
    lines += [f"| {k} | {_cell(v)} |" for k, v in facts if v not in (None, "")]
    pk = m.get("packages") or {}
    if pk:
        lines += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in pk.items())]
    lines += ["", "## Steps", "", "| step | status | wall s | limit s | note |", "| --- | --- | --- | --- | --- |"]
    for s in summary["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['wall_s']:.1f} | {s['limit_s']:.0f} | "
                     f"{_cell(s['note'])} |")
    for s in summary["steps"]:
        if s["status"] in ("failed", "timeout") and s.get("tail"):
            lines += ["", f"### {s['name']}: last lines", "", "```", *s["tail"][-15:], "```"]
    t = summary["tests"]
    lines += ["", "## Tests marked gpu", ""]
    if t:
        lines.append(f"passed {t['passed']}, failed {t['failed']}, skipped {t['skipped']}")
        lines += [f"- FAILED {f['test']}: {f['message']}" for f in t["failures"]]
        lines += [f"- skipped x{n}: {r}" for r, n in t["skips"].items()]
    else:
        lines.append("(no results)")
    lines += ["", "## Benchmarks"]
    for name, b in summary["benchmarks"].items():
        lines += ["", f"### {name}" + (f": {b['title']}" if b.get("title") else ""), ""]
        if "rows" in b:
            lines += md_table(b["rows"])
            lines += [f"- {n}" for n in b.get("notes", [])]
        else:
            lines += ["```", *b.get("stdout_tail", [])[-20:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="run every step's CPU half here")
    ap.add_argument("--skip-wheelhouse", action="store_true",
                    help="dry run: leave out the wheelhouse download and install")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "build" / "gpu-check"))
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--only", default=None,
                    help="comma-separated steps to run besides wheels and card (a retry)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"total seconds for all steps (default {BUDGET_S}, {DRY_BUDGET_S} dry-run)")
    # internal: the bodies of the wheels, card and build steps, run as child processes
    ap.add_argument("--install-wheels", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--site", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--fetch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--build", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    ap.add_argument("--build-json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-lib", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = DRY_BUDGET_S if args.dry_run else BUDGET_S
    if args.install_wheels:
        return install_wheels(args.install_wheels, args.site, args.fetch)
    if args.probe:
        return probe(args.probe, args.device)
    if args.build:
        return build(args.build, args.build_json, args.build_lib)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("gpu_check.json", "gpu_check.md", "gpu_check.log", *JUNITS):
        (out / stale).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rv2-gpu-check-"))
    try:  # the work folder (site, inductor cache, engines) goes whatever happens: GBs on a GPU
        return check(args, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(args, out: Path, work: Path) -> int:
    """Run the planned steps with `work` as the scratch folder; 0 if every step passed."""
    site = Path("/tmp/rv2-site") if not args.dry_run else work / "site"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"))
    paths = [str(REPO / "python"), str(TOOLS), str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # cmake, ninja and pytest installed beside this interpreter (the GPU image's venv)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    steps = plan(args, work, site)
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {s.name for s in steps}
        if unknown:
            print(f"gpu_check: error: --only {','.join(sorted(unknown))}: no such step; steps are "
                  f"{', '.join(s.name for s in steps)}", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    print(f"rv2 gpu_check ({'dry-run' if args.dry_run else 'gpu'}): {len(steps)} steps, budget "
          f"{args.budget_s:.0f} s, output in {out}", flush=True)
    with open(out / "gpu_check.log", "w") as log:
        for step in steps:
            if schedule(step, args.budget_s - (time.perf_counter() - t0), only) == "run":
                run_step(step, log, env)
            else:
                msg = f"-- {step.name}: skipped ({step.note})"
                print(msg, flush=True)
                log.write(msg + "\n")
        wall = time.perf_counter() - t0
        summary = summarize(args, steps, work, started, wall)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "gpu_check.md").write_text(markdown(summary))
        print("\n" + markdown(summary), flush=True)
        log.write(f"\ntotal {wall:.1f} s\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
