"""`rv2 generate`: QC'd synthetic dataset (re)generation. Imports torch only when run."""
from __future__ import annotations

import json

import click

from rv2.errors import UserError
from rv2.generate.config import SAMPLERS, SLOT_SAMPLERS


def ray_options(f):
    """The options of the Ray executor (shared with `rv2 predict`)."""
    opts = [
        click.option("--address", default=None,
                     help="ray: auto (the cluster started on this node) or ray://HOST:PORT; default: a local cluster."),
        click.option("--workers", type=int, default=None,
                     help="ray: workers to start (default: one per GPU, else one per --cpus-per-worker CPUs)."),
        click.option("--gpus-per-worker", type=float, default=None,
                     help="ray: GPUs per worker (default 1 where the cluster has GPUs, else 0)."),
        click.option("--cpus-per-worker", type=float, default=None,
                     help="ray: CPUs (and torch threads) per worker (default 1)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def make_executor(ctx, name: str, kind: str, **options):
    """The executor the rv2 command line wires in by name (`rv2.cli.make_executor`); None:
    the stage's in-process default."""
    factory = (ctx.find_object(dict) or {}).get("make_executor")
    if factory is None:
        if name not in ("auto", "inprocess"):
            raise UserError(f"--executor {name} needs the rv2 command line (rv2 {kind} ...)")
        return None
    return factory(name, kind, **options)


def load_engines(ctx, folder, device=None):
    """The compiled engines the rv2 command line wires in (`rv2.cli.load_engines`): stage
    commands never import `rv2.engines`, which sits above them."""
    loader = (ctx.find_object(dict) or {}).get("load_engines")
    if loader is None:
        raise UserError("--engines needs the rv2 command line (rv2 generate|predict ...)")
    return loader(folder, device)


@click.command("generate")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False),
              help="Expanded prompts table (Parquet) from the prompts stage.")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Generator: a diffusers StableDiffusionPipeline folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Store folder (created; an existing store is resumed).")
@click.option("--qc-weights-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the QC weights (the real files or an rv2 QC bundle).")
@click.option("--qc-calibration", default=None, type=click.Path(dir_okay=False),
              help="A `rv2 qc calibrate` file: use its age tolerance (the age model's error SD on "
                   "real data, the paper's rule) instead of the authors' 16 years.")
@click.option("--no-qc", is_flag=True, help="Accept every image without QC.")
@click.option("--batch-size", type=int, default=None, help="Images per batch (default 8).")
@click.option("--max-attempts", type=int, default=None, help="Attempts per prompt (default 4 = 1 + 3 retries).")
@click.option("--sampler", default=None, type=click.Choice(SAMPLERS),
              help="Sampling algorithm (default pndm, the paper's). unipc runs on the inprocess "
                   "executor only (no per-slot version). docs/regeneration-study.md compares them.")
@click.option("--steps", type=int, default=None, help="Inference steps (default 75).")
@click.option("--early-reject", default=None, metavar="F1,F2,...",
              help="Early QC rejection: judge the predicted final image at these fractions of "
                   "the steps (e.g. 0.3,0.5) and stop attempts past --early-margin (default: off).")
@click.option("--early-margin", type=float, default=None,
              help="Early rejection margin: stop when the wrong sex or race leads the requested "
                   "one by more than this probability (default 0.3).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance (default 4.0).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto).")
@click.option("--dtype", default=None, type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="auto: fp16 on GPU, fp32 on CPU.")
@click.option("--limit", type=int, default=None, help="Only the first N prompts.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="GenerateConfig file (YAML/TOML/JSON).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override, e.g. --set store.image_format=jpeg (repeatable).")
@click.option("--executor", default=None,
              type=click.Choice(["auto", "native", "python", "inprocess", "ray"]),
              help="native: overlapped stages + continuous batching (rv2._C); python: its twin; "
                   "inprocess: one batch at a time; auto (default): native where built.")
@click.option("--slots", type=int, default=None,
              help="Denoiser slots of the native/python executors (default: --batch-size).")
@click.option("--cuda-streams", is_flag=True, default=None,
              help="Pipeline executors on CUDA: each stage on a CUDA stream of its own, so the "
                   "VAE and QC of finished images overlap the denoiser on the GPU.")
@click.option("--cuda-graph", is_flag=True, default=None,
              help="Pipeline executors on CUDA: the denoiser's step (every slot) captured once in "
                   "a CUDA graph and replayed (eager UNet).")
@click.option("--speculate", is_flag=True, default=None,
              help="Pipeline executors: denoiser slots that would idle start a prompt's next "
                   "attempt before its current one is judged; kept if that one fails, dropped if "
                   "it passes. The store is the same; pays where a free slot is nearly free.")
@click.option("--allow-long-prompts", is_flag=True,
              help="Generate from prompts over 77 CLIP tokens (the text encoder cuts them; "
                   "warned) instead of refusing them.")
@click.option("--quota", default=None, metavar="FILE|per-cell=N",
              help="Targets of accepted images per sex x race x age-bin cell: a CSV "
                   "(sex,race,age_bin[,finding],target) or per-cell=N for every cell of the "
                   "prompts table; generation runs in rounds until the targets or the budget "
                   "(docs/regeneration-study.md).")
@click.option("--budget-attempts", type=int, default=None,
              help="With --quota: attempts the store may hold in all (default: --max-attempts x "
                   "the total target).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), default=None,
              help="Run the compiled engines of this folder (`rv2 build-engines --generator`); "
                   "QC runs from its QC engines unless --qc-weights-dir is given.")
@ray_options
@click.pass_context
def generate(ctx, prompts_path, model_dir, out_dir, qc_weights_dir, qc_calibration, no_qc, batch_size,
             max_attempts, sampler, steps, early_reject, early_margin, guidance, device, dtype, limit,
             config_path, overrides, executor, slots, cuda_streams, cuda_graph, speculate, allow_long_prompts, quota,
             budget_attempts, no_progress, engines_dir, address, workers, gpus_per_worker, cpus_per_worker):
    """Generate a QC'd synthetic dataset store from an expanded prompts table.

    Failed images are regenerated with the prompt's next seed up to --max-attempts.
    Kill it at any time; the same command resumes where it stopped. Ctrl-C or SIGTERM
    finish the batch in flight and exit with 130 / 143 and how to resume."""
    from rv2.generate.config import GenerateConfig
    from rv2.generate.pipeline import generate_dataset

    flags = {"batch_size": batch_size, "max_attempts": max_attempts, "limit": limit,
             "sampler.name": sampler, "sampler.steps": steps, "sampler.guidance": guidance,
             "sampler.device": device, "early_reject.at": _fractions(early_reject),
             "early_reject.margin": early_margin,
             "sampler.dtype": dtype, "qc.weights_dir": qc_weights_dir,
             "qc.calibration": qc_calibration,
             "qc.enabled": False if no_qc else None,
             "executor": executor if executor != "ray" else None, "slots": slots,
             "cuda_streams": cuda_streams, "cuda_graph": cuda_graph, "speculate": speculate,
             "allow_long_prompts": True if allow_long_prompts else None,
             "quota.targets": quota, "quota.budget_attempts": budget_attempts}
    sets = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = GenerateConfig.load(config_path, list(overrides) + sets).validate()
    if cfg.executor == "auto" and executor is None and cfg.sampler.name not in SLOT_SAMPLERS:
        cfg.executor = "inprocess"   # the continuous executors need a per-slot sampler
    if cfg.quota.budget_attempts is not None and not cfg.quota.targets:
        raise UserError("--budget-attempts bounds a quota run: give --quota FILE|per-cell=N too")
    ray = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker,
           "cpus_per_worker": cpus_per_worker}
    if executor == "ray":
        if cfg.cuda_streams or cfg.cuda_graph or cfg.speculate:
            raise UserError("--cuda-streams, --cuda-graph and --speculate are options of the "
                            "pipeline executors (--executor native or python), not of Ray's workers")
        ex = make_executor(ctx, "ray", "generate", batch_size=cfg.batch_size, **ray)
        if callable(getattr(ex, "connect", None)):
            c = ex.connect()
            click.echo(f"ray: cluster {c['address']} ({c['nodes']} node(s), {c['cpus']:g} CPU(s), "
                       f"{c['gpus']:g} GPU(s))" + (f"; dashboard {c['dashboard_url']}"
                                                  if c.get("dashboard_url") else ""), err=True)
    else:
        ex = make_executor(ctx, cfg.executor, "generate", batch_size=cfg.batch_size,
                           slots=cfg.slots, cuda_streams=cfg.cuda_streams, cuda_graph=cfg.cuda_graph,
                           speculate=cfg.speculate,
                           **ray)
    stages = None
    if engines_dir:
        if executor == "ray":
            raise UserError("--engines with --executor ray: each Ray worker loads the eager "
                            "model; run the engines with the native, python or inprocess executor")
        engines = load_engines(ctx, engines_dir,
                               None if cfg.sampler.device == "auto" else cfg.sampler.device)
        engines.check_generator(model_dir)
        stages = engines.stages(qc=cfg.qc.enabled and not qc_weights_dir)
    summary = generate_dataset(prompts_path, model_dir, out_dir, cfg, executor=ex, stages=stages,
                               progress=not no_progress)
    keys = ("accepted", "failed", "failed_by_attribute", "attempts_histogram", "attempts",
            "executor", "this_run", "workers")
    click.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    if "quota" in summary:
        from rv2.generate.quota import format_report

        click.echo(format_report(summary["quota"]))
    tol = summary["age_tolerance"]
    click.echo(f"age tolerance: {tol['years']:.3f} years ({tol['source']}: {tol['rule']})")
    click.echo(f"store: {out_dir}  (manifest: {summary['manifest']})")


def _fractions(text: str | None) -> list[float] | None:
    """--early-reject "0.3,0.5" -> [0.3, 0.5]; a clear error for anything else."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--early-reject {text!r}: give fractions of the steps separated by "
                        "commas, e.g. 0.3,0.5") from None


@click.group("qc")
def qc() -> None:
    """QC networks (sex, race, age): calibrate them on real radiographs."""


@qc.command("calibrate")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False),
              help="Real images with sex, race and age columns (a manifest from `rv2 data index`).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Calibration file to write (JSON; its rv2 metadata goes beside it).")
@click.option("--qc-weights-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the QC weights (the real files or an rv2 QC bundle).")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Image root (default: the manifest sidecar's, else the manifest's folder).")
@click.option("--split", default=None, help="Only rows of this split (default: every row).")
@click.option("--limit", type=int, default=None, help="A seeded sample of this many rows.")
@click.option("--image-size", type=int, default=None,
              help="Square size real images are resized to before QC (default 512, as generations).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="QCCalibrationConfig file (YAML/TOML/JSON).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Setting override, e.g. --set tolerance_rule=rmse (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def calibrate(manifest, out, qc_weights_dir, root, split, limit, image_size, device, config_path,
              overrides, no_progress):
    """Measure the QC networks on real images: sex and race accuracy, age RMSE and error SD
    (n, bootstrap CIs by patient), and the age tolerance by the paper's rule (the SD)."""
    from rv2.generate.qc_calibration import (
        QCCalibrationConfig,
        calibrate_qc,
        format_calibration,
        write_calibration,
    )

    flags = {"manifest": manifest, "weights_dir": qc_weights_dir, "root": root, "split": split,
             "limit": limit, "image_size": image_size, "device": device,
             "progress": False if no_progress else None}
    sets = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = QCCalibrationConfig.load(config_path, list(overrides) + sets)
    doc = calibrate_qc(cfg)
    path = write_calibration(doc, out, cfg)
    click.echo(format_calibration(doc))
    click.echo(f"calibration: {path}  (use: rv2 generate --qc-calibration {path})")
