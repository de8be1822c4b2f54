"""The `rv2` command line: one click group, one thin command per stage.

Stage commands live next to their code (`rv2/<stage>/cli.py`) and are imported
only when invoked, so `rv2 --help` stays fast and imports no torch.
"""
from __future__ import annotations

import importlib
import json
import logging
import sys

import click

from rv2 import __version__
from rv2.errors import RV2Error, UserError, one_line

# command name -> "module:attribute" of a click command or group, in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("rv2.cli:doctor", "Show versions, devices, native target and weights found."),
    "data": ("rv2.data.cli:data", "Datasets: index official layouts into one Parquet manifest (+ CONSORT sidecar); statistics tables."),
    "prompts": ("rv2.prompts.cli:prompts", "Prompts from reports: build (77-token fit), expand (8 demographic variants), authors' CSV import/export."),
    "train-generator": ("rv2.finetune.cli:train_generator", "Fine-tune the generator (UNet + text encoder); resumable, multi-GPU via accelerate."),
    "eval-generator": ("rv2.evaluate.generator_cli:eval_generator", "Checkpoint metrics of a generator (Supplementary Table 1): alignment, FID, MS-SSIM, BioViL, diversity; selection."),
    "qc": ("rv2.generate.cli:qc", "QC networks: calibrate them on real images (accuracy, age error SD = the paper's age tolerance)."),
    "generate": ("rv2.generate.cli:generate", "Generate a QC'd synthetic dataset from expanded prompts (retries, crash-safe resumable store)."),
    "train-classifier": ("rv2.classify.cli:train_classifier", "Train the DenseNet-121 disease classifier (real, synthetic, mixed, pretrain-finetune; sweep)."),
    "predict": ("rv2.classify.cli:predict", "Disease probabilities per image from a trained classifier; unreadable images reported."),
    "evaluate": ("rv2.evaluate.cli:evaluate", "AUROC/AP with bootstrap CIs, subgroup AUROC, fairness and underdiagnosis gaps; Markdown/HTML report."),
    "compare": ("rv2.evaluate.cli:compare", "Paired model comparison: DeLong, bootstrap and permutation tests, CIs of differences; report."),
    "build-engines": ("rv2.engines.cli:build_engines", "Compiled engines (ONNX Runtime, AOTInductor, TensorRT) for a target: manifests, parity gates, cache; Triton repository."),
    "serve": ("rv2.serve.cli:serve", "Serve a classifier on KServe v2 / Triton's protocol (HTTP + gRPC, dynamic batching, /metrics)."),
    "demo": ("rv2.demo.cli:demo", "The main job end to end on a built-in phantom world with bundled tiny models."),
}

# --executor NAME -> "module:attribute" of a factory(kind, **options) for the stage commands
# (kind: "generate" or "predict"). The stage commands sit in layers below the executors, so
# the table reaches them through the click context (`make_executor` in ctx.obj).
EXECUTORS: dict[str, str] = {
    "ray": "rv2.distributed.factory:make_executor",
}


def make_executor(name: str, kind: str = "generate", batch_size: int = 8, slots: int | None = None,
                  cuda_streams: bool = False, cuda_graph: bool = False, speculate: bool = False,
                  **options):
    """The executor called `name` for stage `kind` ("generate" or "predict"). The stage
    commands sit in layers below the executors, so this factory reaches them through the
    click context (`make_executor` in ctx.obj). None: the stage's in-process default."""
    if name in EXECUTORS:
        mod_name, attr = EXECUTORS[name].split(":")
        if kind == "generate":
            options["batch_size"] = batch_size
        return getattr(importlib.import_module(mod_name), attr)(kind, **options)
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} applies to --executor ray only")
    if kind == "predict":
        if name not in ("inprocess", "auto"):
            raise UserError(f"rv2 predict runs inprocess or ray, not {name!r}")
        return None
    from rv2.runtime.executors import make_executor as make

    return make(name, batch_size, slots, cuda_streams, cuda_graph, speculate)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        mod_name, attr = target.split(":")
        return getattr(importlib.import_module(mod_name), attr)

    def invoke(self, ctx):
        # Bad input is one line and exit 2; rv2's other deliberate errors one line and
        # their own status (1 by default); anything else is a bug and keeps its traceback.
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except RV2Error as exc:
            click.echo(f"Error: {one_line(exc)}", err=True)
            ctx.exit(getattr(exc, "exit_code", 1))

    def format_commands(self, ctx, formatter):
        # Short help from the table, so listing commands imports nothing.
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rv2")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """rv2: controllable synthetic chest radiographs, QC'd generation, fair classifiers."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)["make_executor"] = make_executor
    ctx.obj["load_engines"] = load_engines


def load_engines(folder, device: str | None = None):
    """Compiled engines (`rv2 build-engines`) for `rv2 generate/predict --engines DIR`."""
    from rv2.engines.runtime import load

    return load(folder, device=device)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Show versions, devices, native target and weights found; exit 1 only if broken."""
    from rv2 import doctor as doc

    report = doc.collect()
    click.echo(json.dumps(report, indent=2) if as_json else doc.format_report(report))
    sys.exit(doc.main_exit_code(report))


if __name__ == "__main__":  # pragma: no cover
    main()
