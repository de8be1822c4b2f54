"""`rv2 demo`: the main job end to end on the phantom world, through the real commands.

Every stage after the world runs the `rv2` command a user would type (invoked
in-process through the click group, so the code path is exactly the CLI's);
the commands are also written to `<out>/commands.sh`, so the same run can be
repeated by hand, or on real data by swapping the paths and weights.

    world      rv2.demo.writers.write_world -> MIMIC-CXR-JPG + MIMIC-IV tree, CheXpert and NIH sites
    data       rv2 data index (mimic, PA, paper split and exclusions; chexpert, nih, PA)
    test set   the MIMIC test split (p19) + the external sites, one manifest (dataset column)
    prompts    rv2 prompts build / expand (8 demographic variants of train impressions)
    generate   rv2 generate with the bundled generator and QC bundle, retries
    classify   rv2 train-classifier: real, pretrain-finetune (full size: + synthetic, mixed)
    predict    rv2 predict on both test sites
    evaluate   rv2 evaluate per model, rv2 compare (paired tests, fairness gaps)
    report     <out>/report.md and report.html linking every stage's artifact
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from rv2.config import Config, write_artifact_meta
from rv2.data.manifest import read_manifest, read_sidecar, write_manifest
from rv2.demo.demo_report import write_demo_report
from rv2.demo.writers import WorldConfig, write_world
from rv2.errors import RV2Error, UserError
from rv2.files import atomic_write_text

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class DemoError(RV2Error, RuntimeError):
    """A demo stage failed; the message names the stage and its command."""


@dataclasses.dataclass
class DemoConfig(Config):
    """Settings of `rv2 demo`; `size` picks the defaults of everything else."""

    VERSION = 1
    seed: int = 0
    size: str = "small"
    mimic_subjects: int = 260
    chexpert_subjects: int = 90
    nih_subjects: int = 90            # second external site (NIH ChestX-ray14 layout, no race)
    image_size: int = 64
    val_fraction: float = 0.15        # of p10-p18 patients (the paper's 2% is too few here)
    n_generate: int = 48              # expanded prompts to generate (first N: whole 8-variant groups)
    gen_steps: int = 15               # PNDM steps of the tiny generator
    gen_guidance: float = 3.0         # the authors' demo value; trained with 10% empty prompts
    gen_batch: int = 16
    max_attempts: int = 4
    strategies: list[str] = dataclasses.field(default_factory=lambda: ["real", "pretrain-finetune"])
    clf_image_size: int = 48
    clf_epochs: int = 3
    clf_pretrain_epochs: int = 2
    clf_batch: int = 32
    clf_max_steps: int = 0            # 0: no cap per phase
    n_synthetic_mixed: int = 0        # mixed: synthetic images added (0: all accepted)
    n_boot: int = 200
    n_perm: int = 200
    min_count: int = 8
    weights_dir: str = ""             # default: the bundled rv2/demo/weights


SIZES = {
    "small": dict(mimic_subjects=400, chexpert_subjects=120, nih_subjects=100, n_generate=64,
                  clf_epochs=5,
                  clf_pretrain_epochs=3),
    # about 5 minutes on two free cores (limit: 10)
    "full": dict(mimic_subjects=1400, chexpert_subjects=400, nih_subjects=400, n_generate=480,
                 gen_steps=20,
                 strategies=["real", "synthetic", "mixed", "pretrain-finetune"],
                 clf_epochs=5, clf_pretrain_epochs=3, n_boot=500, n_perm=500, min_count=16),
}


def demo_config(size: str = "small", seed: int = 0, overrides=()) -> DemoConfig:
    if size not in SIZES:
        raise UserError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = DemoConfig.from_dict({**SIZES[size], "size": size, "seed": seed})
    return cfg.override(overrides) if overrides else cfg


def bundled_weights(weights_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the generator folder and QC bundle; a clear error if they are absent."""
    base = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    gen, qc = base / "generator", base / "qc"
    missing = [str(p) for p in (gen / "model_index.json", qc / "qc_bundle.json") if not p.is_file()]
    if missing:
        raise DemoError(f"demo weights missing: {', '.join(missing)}. They ship inside the rv2 "
                        "package (rv2/demo/weights); rebuild them with "
                        "`python tools/train_demo_models.py` from a source checkout")
    return {"generator": gen, "qc": qc, "record": base / "record.json"}


class _Runner:
    def __init__(self, out: Path, quiet: bool, cli):
        self.out = out
        self.cli = cli
        self.quiet = quiet
        self.log: list[dict] = []
        self.commands: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)

    def rv2(self, stage: str, args: list[str]) -> None:
        """Run one `rv2 ...` command in-process, as the CLI would."""
        args = [str(a) for a in args]
        line = "rv2 " + " ".join(shlex.quote(a) for a in args)
        self.commands.append(line)
        self.say(f"  $ {line}")
        t0 = time.perf_counter()
        try:
            self.cli.main(args=args, prog_name="rv2", standalone_mode=False)
        except SystemExit as exc:  # click may still exit on --help style paths
            if exc.code not in (0, None):
                raise DemoError(f"stage {stage}: `{line}` exited with {exc.code}") from exc
        except Exception as exc:
            msg = getattr(exc, "message", None) or str(exc)
            raise DemoError(f"stage {stage}: `{line}` failed: {type(exc).__name__}: {msg}") from exc
        self.log.append({"stage": stage, "command": line, "wall_s": round(time.perf_counter() - t0, 2)})


def _test_manifest(data: Path, world_root: Path, out: Path) -> Path:
    """MIMIC's test split and the external sites in one manifest, paths relative to the world."""
    import pandas as pd

    m = read_manifest(data / "mimic.parquet")
    c = read_manifest(data / "chexpert.parquet")
    m = m[m["split"] == "test"].copy()
    m["path"] = "mimic-cxr-jpg/" + m["path"].astype(str)
    c = c.copy()
    c["path"] = "chexpert/" + c["path"].astype(str)
    c["split"] = "test"
    parts = [m, c]
    if (data / "nih.parquet").is_file():
        n = read_manifest(data / "nih.parquet").copy()
        n["path"] = "nih/" + n["path"].astype(str)
        n["split"] = "test"
        parts.append(n)
    # No Finding negatives on abnormal studies come from `rv2 data index`'s No Finding rule.
    df = pd.concat(parts, ignore_index=True)
    side = {"what": "rv2 demo test set: MIMIC p19 test split (in-distribution) + the CheXpert- and "
                    "NIH-layout sites (out-of-distribution); paths relative to the world folder",
            "sources": {"mimic": read_sidecar(data / "mimic.parquet").get("config"),
                        "chexpert": read_sidecar(data / "chexpert.parquet").get("config")},
            "root": str(world_root)}
    return write_manifest(df, out, side, inputs=[data / "mimic.parquet", data / "chexpert.parquet"])


def run_demo(out: str | Path, cfg: DemoConfig, cli, quiet: bool = False) -> Path:
    """Run every stage; returns the path of the report (report.md).

    cli: the `rv2` click group that runs each stage's command (`rv2.cli.main`; the
    demo command passes the group it was invoked from, so demo never imports the CLI)."""
    out = Path(out).resolve()
    previous = out / "demo_config.yaml"
    if previous.is_file() and DemoConfig.load(previous).to_dict() != cfg.to_dict():
        # Stages resume from what they find; a run with other settings must not be mixed in.
        raise DemoError(f"{out} holds a demo run with other settings ({previous}); use another "
                        "--out or delete that folder")
    if not previous.is_file() and out.is_dir() and any(out.iterdir()):
        raise DemoError(f"{out} exists and is not a demo run folder; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    w = bundled_weights(cfg.weights_dir or None)
    r = _Runner(out, quiet, cli)
    t_start = time.perf_counter()
    cfg.save(out / "demo_config.yaml")
    n_stages = 9
    step = iter(range(1, n_stages + 1))

    def header(name: str) -> None:
        r.say(f"\n[{next(step)}/{n_stages}] {name}  (t = {time.perf_counter() - t_start:.0f}s)")

    # 1. world
    header("world: phantom radiographs in the MIMIC-CXR-JPG + MIMIC-IV and CheXpert layouts")
    wcfg = WorldConfig(seed=cfg.seed, image_size=cfg.image_size, mimic_subjects=cfg.mimic_subjects,
                       chexpert_subjects=cfg.chexpert_subjects, nih_subjects=cfg.nih_subjects)
    t0 = time.perf_counter()
    wp = write_world(wcfg, out / "world", show_progress=not quiet)
    r.log.append({"stage": "world", "command": "rv2.demo.writers.write_world",
                  "wall_s": round(time.perf_counter() - t0, 2)})

    # 2. data index
    header("data: rv2 data index (MIMIC with the paper's split and exclusions; CheXpert, NIH sites)")
    data = out / "data"
    q = ["--quiet"] if quiet else []
    r.rv2("data", ["data", "index", "--dataset", "mimic", "--root", wp.mimic_root, "--views", "PA",
                   "--metadata", wp.mimic_metadata, "--metadata", wp.mimic_chexpert,
                   "--metadata", wp.mimic_split, "--metadata", wp.patients,
                   "--metadata", wp.admissions, "--set", f"val_fraction={cfg.val_fraction}",
                   "--set", f"seed={cfg.seed}", "--out", data / "mimic.parquet", *q])
    r.rv2("data", ["data", "index", "--dataset", "chexpert", "--root", wp.chexpert_root,
                   "--views", "PA", "--metadata", wp.chexpert_csv,
                   "--metadata", wp.chexpert_demographics, "--out", data / "chexpert.parquet", *q])
    if cfg.nih_subjects:
        r.rv2("data", ["data", "index", "--dataset", "nih", "--root", wp.nih_root, "--views", "PA",
                       "--metadata", wp.nih_csv, "--out", data / "nih.parquet", *q])
    r.rv2("data", ["data", "stats", data / "mimic.parquet", "--out", data / "stats"])
    test = _test_manifest(data, wp.root, data / "test.parquet")
    r.say(f"  test set: {test}")

    # 3. prompts
    header("prompts: rv2 prompts build / expand")
    pdir = out / "prompts"
    r.rv2("prompts", ["prompts", "build", "--manifest", data / "mimic.parquet",
                      "--out", pdir / "prompts.parquet"])
    r.rv2("prompts", ["prompts", "expand", pdir / "prompts.parquet", "--seed", cfg.seed,
                      "--out", pdir / "expanded.parquet"])

    # 4. generate
    header("generate: rv2 generate with QC and retries (bundled tiny generator and QC models)")
    syn = out / "synthetic"
    r.rv2("generate", ["generate", "--prompts", pdir / "expanded.parquet", "--model", w["generator"],
                       "--qc-weights-dir", w["qc"], "--out", syn, "--limit", cfg.n_generate,
                       "--steps", cfg.gen_steps, "--guidance", cfg.gen_guidance,
                       "--batch-size", cfg.gen_batch, "--max-attempts", cfg.max_attempts,
                       "--device", "cpu", "--set", f"sampler.base_seed={cfg.seed}"]
          + (["--no-progress"] if quiet else []))

    # 5. classifiers
    header(f"classify: rv2 train-classifier ({', '.join(cfg.strategies)})")
    models = out / "models"
    common = ["--real", data / "mimic.parquet", "--image-size", cfg.clf_image_size,
              "--init", "scratch", "--batch-size", cfg.clf_batch, "--num-workers", 0,
              "--epochs", cfg.clf_epochs, "--seed", cfg.seed, "--device", "cpu",
              "--set", f"real_root={wp.mimic_root}", "--set", f"val_root={wp.mimic_root}",
              "--set", f"synthetic_root={syn}", "--set", "cache_images=true",
              "--set", f"pretrain_epochs={cfg.clf_pretrain_epochs}",
              "--set", f"patience={max(2, cfg.clf_epochs)}"]
    if cfg.clf_max_steps:
        common += ["--max-steps", cfg.clf_max_steps]
    syn_manifest = syn / "manifest.parquet"
    for strategy in cfg.strategies:
        extra = []
        if strategy != "real":
            extra += ["--synthetic", syn_manifest]
        if strategy == "mixed" and cfg.n_synthetic_mixed:
            extra += ["--n-synthetic", cfg.n_synthetic_mixed]
        r.rv2("classify", ["train-classifier", "--strategy", strategy, "--out", models / strategy,
                           *common, *extra])

    # 6. predict
    header("predict: rv2 predict on the in-distribution (MIMIC p19) and external sites")
    preds = out / "predictions"
    for strategy in cfg.strategies:
        r.rv2("predict", ["predict", "--model", models / strategy, "--manifest", test,
                          "--root", wp.root, "--out", preds / f"{strategy}.parquet",
                          "--device", "cpu"])

    # 7. evaluate
    header("evaluate: rv2 evaluate per model (bootstrap CIs, subgroups, fairness gaps)")
    reports = out / "reports"
    stats_sets = ["--set", f"n_boot={cfg.n_boot}", "--set", f"seed={cfg.seed}",
                  "--set", f"min_count={cfg.min_count}"]
    for strategy in cfg.strategies:
        r.rv2("evaluate", ["evaluate", "--pred", preds / f"{strategy}.parquet", "--model",
                           models / strategy, "--name", strategy, "--manifest", test,
                           "--out", reports / strategy, *stats_sets])

    # 8. compare
    header("compare: rv2 compare (DeLong, paired bootstrap, permutation tests) against real-only")
    cmp_args = ["compare", "--manifest", test, "--out", reports / "compare", *stats_sets,
                "--set", f"n_perm={cfg.n_perm}"]
    for strategy in cfg.strategies:
        cmp_args += ["--pred", preds / f"{strategy}.parquet", "--model", models / strategy,
                     "--name", strategy]
    r.rv2("compare", cmp_args)

    # 9. report
    header("report")

    total = time.perf_counter() - t_start
    report = write_demo_report(out, cfg, r.log, w, total)
    atomic_write_text(out / "commands.sh", "#!/bin/sh\n# the commands `rv2 demo` ran, in order\n"
                      "set -e\n" + "\n".join(r.commands) + "\n")
    atomic_write_text(out / "demo_run.json", json.dumps(
        {"stages": r.log, "total_wall_s": round(total, 1), "report": str(report),
         "python": sys.version.split()[0]}, indent=2))
    write_artifact_meta(report, cfg, inputs=[test, w["generator"], w["qc"]],
                        extra={"stages": r.log, "total_wall_s": round(total, 1)})
    return report
