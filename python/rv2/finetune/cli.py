"""`rv2 train-generator`: fine-tune Stable Diffusion on radiograph/prompt pairs.

Heavy imports happen inside the command so that `rv2 --help` stays light.
Multi-GPU: `accelerate launch -m rv2.cli train-generator ...` (docs/train-generator.md).
"""
from __future__ import annotations

import click


@click.command("train-generator")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML/TOML/JSON file of TrainGeneratorConfig settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. --set optim.max_steps=10000 (repeatable).")
@click.option("--preset", type=click.Choice(["paper", "authors"]), default=None,
              help="paper (default): constant LR after 500 warm-up steps; authors: lr 1e-5, "
                   "cosine, weight decay 1e-2, clip 1.0.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def train_generator(config_path, overrides, preset, print_config):
    """Fine-tune UNet + text encoder (VAE frozen); resumable; writes a diffusers pipeline."""
    import yaml
    from rv2.finetune.config import load_train_config

    cfg = load_train_config(config_path, overrides, preset)
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    from rv2.finetune.train import train_generator as run

    out = run(cfg)
    import os

    if os.environ.get("RANK", "0") == "0":
        click.echo(f"pipeline written to {out}")
