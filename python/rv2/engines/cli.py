"""`rv2 build-engines`: compiled engines for a deployment target."""
from __future__ import annotations

import shlex
import sys

import click


@click.command("build-engines")
@click.option("--target", required=True,
              help="Target profile: a name shipped with rv2 (cpu, demo, a100, h100) or a YAML path.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Engines folder (created; rebuilding with nothing changed is a cache hit).")
@click.option("--generator", type=click.Path(file_okay=False),
              help="Generator: a diffusers folder (text encoder, UNet, VAE decoder engines).")
@click.option("--qc-weights-dir", type=click.Path(file_okay=False),
              help="QC weights: the real files or an rv2 QC bundle (sex, race, age engines).")
@click.option("--qc-convention", type=click.Choice(["authors", "xrv"]), default=None,
              help="QC preprocessing convention folded into the QC engines (default: the bundle's, "
                   "else authors).")
@click.option("--classifier", type=click.Path(file_okay=False),
              help="Disease classifier folder from `rv2 train-classifier`.")
@click.option("--backends", default=None,
              help="Comma-separated subset of the profile's backends (onnxruntime, aotinductor, "
                   "tensorrt); default: the profile's list.")
@click.option("--device", default=None, help="Build device (default: the profile's, cpu or cuda).")
@click.option("--format", "fmt", type=click.Choice(["rv2", "triton"]), default="rv2", show_default=True,
              help="triton: also write a Triton model repository (OUT/triton) for the classifier "
                   "and QC networks.")
@click.option("--e2e-steps", type=int, default=10, show_default=True,
              help="Sampling steps of the end-to-end parity check of the generator engines (0: skip).")
@click.option("--e2e-prompts", type=int, default=16, show_default=True,
              help="Prompts in the end-to-end parity set.")
@click.option("--components", default=None,
              help="Comma-separated subset to (re)build, e.g. classifier; the others are kept.")
@click.option("--force", is_flag=True, help="Rebuild everything, ignoring the cache.")
def build_engines(target, out, generator, qc_weights_dir, qc_convention, classifier, backends, device,
                  fmt, e2e_steps, e2e_prompts, components, force):
    """Export, compile and parity-check every given network for a target; prints the
    parity table. A failed parity gate fails the build and names the component."""
    from pathlib import Path

    from rv2.engines.build import Sources, build_engines as build
    from rv2.engines.profile import load_profile

    profile = load_profile(target)
    sources = Sources(generator=Path(generator) if generator else None,
                      qc_dir=Path(qc_weights_dir) if qc_weights_dir else None,
                      qc_convention=qc_convention,
                      classifier=Path(classifier) if classifier else None)
    command = "rv2 " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["build-engines"] \
        else _command(target, out, generator, qc_weights_dir, classifier)
    index = build(profile, out, sources, backends=[b.strip() for b in backends.split(",")] if backends else None,
                  device=device, force=force, e2e_steps=e2e_steps, e2e_prompts_n=e2e_prompts,
                  only=[c.strip() for c in components.split(",")] if components else None,
                  command=command, echo=click.echo)
    if fmt == "triton":
        from rv2.engines.triton import write_repository

        repo = write_repository(out, Path(out) / "triton")
        click.echo(f"Triton model repository: {repo}")
    chosen = {c: e["selected"] for c, e in index["components"].items()}
    click.echo(f"engines: {out}  (selected: {chosen})")


def _command(target, out, generator, qc, classifier) -> str:
    parts = ["rv2", "build-engines", "--target", target, "--out", out]
    for flag, v in (("--generator", generator), ("--qc-weights-dir", qc), ("--classifier", classifier)):
        if v:
            parts += [flag, v]
    return " ".join(shlex.quote(str(p)) for p in parts)
