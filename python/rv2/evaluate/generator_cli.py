"""`rv2 eval-generator`: checkpoint metrics of a generator (Supplementary Table 1)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from rv2.evaluate.generator_eval import EvalGeneratorConfig, evaluate_generators


@click.command("eval-generator")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False),
              help="Validation prompts table (Parquet, `rv2 prompts build` layout) with a path "
                   "column to each prompt's real image; rows with split == 'validate' are used.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (created; an existing one is resumed).")
@click.option("--generator", "generators", multiple=True, type=click.Path(file_okay=False),
              help="A generator folder (diffusers); repeatable.")
@click.option("--checkpoints", default=None, type=click.Path(file_okay=False),
              help="A folder of checkpoints: generator folders, or a `rv2 train-generator` run "
                   "(its checkpoints/step-N states).")
@click.option("--base", default=None, type=click.Path(file_okay=False),
              help="For training states: the folder with VAE, tokenizer and configs (default: "
                   "the run's pipeline/).")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Folder the real images' paths are relative to (default: the prompts "
                   "table's sidecar root, else its folder).")
@click.option("--eval-bundle", default=None, type=click.Path(file_okay=False),
              help="Stand-in scoring nets (eval_bundle.json), e.g. rv2/demo/weights/eval.")
@click.option("--weights-dir", "weights_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder searched for the Inception, torchxrayvision and BioViL weight files "
                   "(repeatable; then RV2_WEIGHTS_DIR, ~/.cache/rv2/weights, ~/.torchxrayvision).")
@click.option("--qc-weights-dir", default=None, type=click.Path(file_okay=False),
              help="QC networks for sex/race accuracy and age RMSE (real files or a QC bundle).")
@click.option("--biovil", "biovil_path", default=None, type=click.Path(),
              help="BioViL image-encoder file or folder.")
@click.option("--inception", type=click.Choice(["fid", "torchvision"]), default=None,
              help="FID feature weights: the TF FID Inception (default) or torchvision's.")
@click.option("--metrics", default=None,
              help="Comma-separated subset of: alignment, demographics, fid, fid_xrv, "
                   "msssim_real, biovil_real, msssim_div, biovil_div.")
@click.option("--n-seeds", type=int, default=None, help="Images per prompt (default 4).")
@click.option("--limit", type=int, default=None, help="Only the first N validation prompts.")
@click.option("--steps", type=int, default=None, help="Inference steps (default 75).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance (default 4.0).")
@click.option("--batch-size", type=int, default=None, help="Generation batch (default 8).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="EvalGeneratorConfig file (YAML/TOML/JSON).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override, e.g. --set selection=fid (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def eval_generator(prompts_path, out_dir, generators, checkpoints, base, root, eval_bundle,
                   weights_dirs, qc_weights_dir, biovil_path, inception, metrics, n_seeds, limit,
                   steps, guidance, batch_size, device, config_path, overrides, no_progress):
    """Score generator checkpoints on prompt alignment, real-synthetic similarity and
    intra-prompt diversity; write table.csv / table.md / table.png and the selected one.

    Generated images are cached per (checkpoint, prompt, seed): rerun the same command
    to resume, or with more metrics to add columns without regenerating."""
    flags = {"eval_bundle": eval_bundle, "qc_weights_dir": qc_weights_dir,
             "biovil_path": biovil_path, "inception": inception, "n_seeds": n_seeds,
             "n_prompts": limit, "steps": steps, "guidance": guidance, "batch_size": batch_size,
             "device": device,
             "weights_dirs": list(weights_dirs) or None,
             "metrics": [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None}
    sets = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    # bad input raises rv2.errors.UserError: the CLI prints one line and exits 2
    cfg = EvalGeneratorConfig.load(config_path, list(overrides) + sets).validate()
    summary = evaluate_generators(prompts_path, out_dir, generators=generators,
                                  checkpoints=checkpoints, base=base, root=root, cfg=cfg,
                                  progress=not no_progress)
    click.echo(Path(summary["table_md"]).read_text())
    for metric, why in summary["skipped"].items():
        click.echo(f"skipped {metric}: {why}", err=True)
    click.echo(f"table: {summary['table_csv']}  figure: {summary['figure']}")
