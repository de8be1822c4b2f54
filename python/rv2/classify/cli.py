"""`rv2 train-classifier [sweep]` and `rv2 predict`."""
from __future__ import annotations

import click

from rv2.classify.config import STRATEGIES
from rv2.errors import UserError
from rv2.generate.cli import load_engines, make_executor, ray_options

# CLI option -> ClassifierConfig field
_FIELDS = {"strategy": "strategy", "real": "real", "synthetic": "synthetic", "val": "val", "out": "out",
           "root": "root", "n_real": "n_real", "real_fraction": "real_fraction",
           "n_synthetic": "n_synthetic", "image_size": "image_size", "epochs": "epochs",
           "batch_size": "batch_size", "num_workers": "num_workers", "max_steps": "max_steps",
           "time_limit": "time_limit_s", "init": "init", "weights_dir": "weights_dir",
           "pretrained_from": "pretrained_from", "device": "device", "seed": "seed", "lr": "lr",
           "views": "views"}


def _common(f):
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/TOML/JSON settings."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a setting."),
        click.option("--real", type=click.Path(dir_okay=False), help="Real training manifest (Parquet)."),
        click.option("--synthetic", type=click.Path(dir_okay=False), help="Synthetic manifest (store)."),
        click.option("--val", type=click.Path(dir_okay=False), help="Validation manifest."),
        click.option("--root", type=click.Path(file_okay=False),
                     help="Folder image paths are relative to (default: the root in each manifest's sidecar, else its folder)."),
        click.option("--n-synthetic", type=int, help="Synthetic images to use (seeded sample)."),
        click.option("--image-size", type=int, help="Input size (paper: 224)."),
        click.option("--epochs", type=int, help="Maximum epochs (paper: 100)."),
        click.option("--batch-size", type=int),
        click.option("--num-workers", type=int),
        click.option("--max-steps", type=int, help="Stop a phase after this many optimizer steps."),
        click.option("--time-limit", type=float, help="Stop a phase after this many seconds."),
        click.option("--init", type=click.Choice(["auto", "imagenet", "scratch"])),
        click.option("--weights-dir", type=click.Path(file_okay=False), help="Where densenet121-a639ec97.pth is."),
        click.option("--device", help="auto | cpu | cuda | cuda:N"),
        click.option("--lr", type=float),
        click.option("--views", help="Views used: PA, a comma list, or all (default: all, with a warning "
                                     "when a manifest mixes views; the paper uses PA)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _config(config_file, overrides, **opts):
    from rv2.classify.config import ClassifierConfig

    cfg = ClassifierConfig.load(config_file)
    given = {_FIELDS[k]: v for k, v in opts.items() if k in _FIELDS and v is not None}
    if given:
        cfg = ClassifierConfig.from_dict({**cfg.to_dict(), **given}, source="command line")
    return cfg.override(overrides) if overrides else cfg


@click.group(invoke_without_command=True)
@_common
@click.option("--strategy", type=click.Choice(STRATEGIES), help="Training strategy (default: real).")
@click.option("--out", type=click.Path(file_okay=False), help="Model folder to write (resumes if present).")
@click.option("--n-real", type=int, help="Real images to use (whole patients, seeded).")
@click.option("--real-fraction", type=float, help="Fraction of real images to use (whole patients, seeded).")
@click.option("--pretrained-from", type=click.Path(file_okay=False),
              help="pretrain-finetune: start from this synthetic-pretrained model folder.")
@click.option("--seed", type=int)
@click.pass_context
def train_classifier(ctx, config_file, overrides, **opts):
    """Train a DenseNet-121 (14 CheXpert labels) with one of the four strategies.

    Rerunning the same command resumes an interrupted run.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rv2.classify.train import train_classifier as train

    cfg = _config(config_file, overrides, **opts)
    out = train(cfg)
    import json

    summary = json.loads((out / "rv2_meta.json").read_text())["summary"]
    click.echo(f"model: {out}")
    click.echo(f"best epoch {summary['best_epoch']} of {summary['epochs_run']} ({summary['stop_reason']}); "
               f"validation mean AUROC {summary['val_auroc_mean']:.4f} over {summary['n_auroc_labels']} labels")


@train_classifier.command("sweep")
@_common
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder.")
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True, help="Comma-separated.")
@click.option("--n-real", "n_real_list", default="", help="Comma-separated real image counts ('all' allowed).")
@click.option("--real-fractions", default="", help="Comma-separated fractions of the real set.")
@click.option("--synthetic-multiples", default="",
              help="Comma-separated synthetic sizes as multiples of each run's real images, e.g. "
                   "0,1,2,5 with --strategies mixed: the supplementation curve.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
def sweep(config_file, overrides, out, strategies, n_real_list, real_fractions, synthetic_multiples,
          seeds, **opts):
    """Run a grid (strategies x real-data sizes x synthetic sizes x seeds) and write OUT/sweep.csv."""
    from rv2.classify.sweep import run_sweep

    base = _config(config_file, overrides, **opts)
    n_reals = [None if x.strip() == "all" else int(x) for x in n_real_list.split(",") if x.strip()]
    fracs = [float(x) for x in real_fractions.split(",") if x.strip()]
    table = run_sweep(base, out, strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                      n_reals=n_reals, fractions=fracs, seeds=[int(s) for s in seeds.split(",") if s.strip()],
                      multiples=_numbers(synthetic_multiples, "--synthetic-multiples"))
    cols = ["strategy", "seed", "n_real_images", "n_synthetic_images", "best_epoch", "val_auroc_mean"]
    if synthetic_multiples.strip():
        cols.insert(2, "synthetic_multiple")
    click.echo(table[cols].to_string(index=False))
    click.echo(f"table: {out}/sweep.csv")


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint=option) from None


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model folder.")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False), help="Manifest (Parquet).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Predictions (Parquet).")
@click.option("--root", type=click.Path(file_okay=False), help="Image root (default: the root in the manifest's sidecar, else its folder).")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--num-workers", default=None, type=int,
              help="Image loader processes (default: up to 8 on CUDA with Pillow decoding, "
                   "else 0).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--decoder", type=click.Choice(["pil", "dali"]), default="pil", show_default=True,
              help="Image decoding: Pillow/pydicom, or batched DALI (rv2[dali]).")
@click.option("--max-unreadable", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Exit non-zero when a larger share of the images cannot be read.")
@click.option("--executor", type=click.Choice(["inprocess", "ray"]), default="inprocess",
              show_default=True, help="ray: split the manifest across classifier actors (rv2[ray]).")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), default=None,
              help="Run the classifier engine of this folder (`rv2 build-engines --classifier`).")
@ray_options
@click.pass_context
def predict(ctx, model_dir, manifest, out, root, batch_size, num_workers, device, decoder,
            max_unreadable, executor, engines_dir, address, workers, gpus_per_worker, cpus_per_worker):
    """Probabilities per image and label; unreadable images are reported in OUT's .skipped.csv.

    Exits with status 2 when no image could be read, or more than --max-unreadable of them.
    With --executor ray the manifest is split across classifier actors (one per GPU or
    CPU slot); the predictions are those of the single-process run."""
    from pathlib import Path

    from rv2.classify.inference import check_unreadable, write_predictions
    from rv2.classify.inference import predict as run
    from rv2.files import check_writable

    check_writable(Path(out).parent, "--out folder")
    ex = make_executor(ctx, executor, "predict", address=address, workers=workers,
                       gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    predictor = None
    if engines_dir:
        if ex is not None:
            raise UserError("--engines runs in this process; leave out --executor ray")
        predictor = load_engines(ctx, engines_dir, None if device == "auto" else device) \
            .predictor(model_dir)
    if ex is None:
        preds = run(model_dir, manifest, root, batch_size=batch_size, device=device,
                    num_workers=num_workers, decoder=decoder, predictor=predictor)
    else:
        preds = ex.predict(model_dir, manifest, root, batch_size=batch_size, decoder=decoder)
        for w in preds.attrs.get("workers", []):
            click.echo(f"{executor} {w['worker']} ({w['device']}, {w['node']}): {w['items']} images, "
                       f"{w['items_per_s'] or 0:.1f} images/s busy", err=True)
    settings = {"model_dir": model_dir, "manifest": manifest, "root": root, "batch_size": batch_size,
                "device": device, "decoder": decoder, "executor": executor, "engines": engines_dir,
                "backend": predictor.backend.name if predictor else "torch"}
    if not len(preds):  # nothing to write but the list of what could not be read
        import pandas as pd

        from rv2.classify.inference import SKIPPED_COLUMNS
        from rv2.files import atomic_write_text

        skipped = Path(out).with_name(Path(out).stem + ".skipped.csv")
        atomic_write_text(skipped, preds.attrs.get("skipped", pd.DataFrame(
            columns=SKIPPED_COLUMNS)).to_csv(index=False))
        check_unreadable(preds, skipped, max_unreadable)
    path, skipped = write_predictions(preds, out, model_dir=model_dir, manifest=manifest, config=settings)
    n_skip = len(preds.attrs["skipped"])
    click.echo(f"{len(preds)} images predicted -> {path}")
    if n_skip:
        click.echo(f"{n_skip} unreadable image(s) skipped, listed in {skipped}", err=True)
    check_unreadable(preds, skipped, max_unreadable)
