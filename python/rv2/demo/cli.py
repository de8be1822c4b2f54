"""`rv2 demo`: the main job end to end on the built-in phantom world."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for every stage's artifacts and the report.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the world and of every stage.")
@click.option("--size", default="small", show_default=True, type=click.Choice(["small", "full"]),
              help="small: a few minutes on 2 cores (what CI runs); full: within 10 minutes.")
@click.option("--weights-dir", default=None, type=click.Path(file_okay=False),
              help="Demo weights (generator/, qc/); default: the ones bundled with rv2.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a demo setting (see rv2.demo.pipeline.DemoConfig), e.g. n_generate=96.")
@click.option("--quiet", is_flag=True, help="No progress bars (stage headers and commands still print).")
def demo(out, seed, size, weights_dir, overrides, quiet):
    """Run world -> data index -> prompts -> QC'd generation -> classifiers -> predict ->
    evaluate / compare -> report on a phantom world, with the bundled tiny models.

    Every stage is the real `rv2` command (listed in OUT/commands.sh); swap in real
    data and weights to run the same job for real."""
    from rv2.demo.pipeline import demo_config, run_demo

    cfg = demo_config(size, seed, list(overrides))
    if weights_dir:
        cfg.weights_dir = str(weights_dir)
    report = run_demo(out, cfg, click.get_current_context().find_root().command, quiet=quiet)
    click.echo(f"\nreport: {report}")
    click.echo(f"        {report.with_suffix('.html')}")
