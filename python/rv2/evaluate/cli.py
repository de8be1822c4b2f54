"""`rv2 evaluate` and `rv2 compare`: thin wrappers over rv2.evaluate.evaluation."""
from __future__ import annotations

import click


def _config(config, sets, split=None, label_policy=None, allow_mismatch=False,
            bootstrap_unit=None, undefined_label=None):
    from rv2.evaluate.evaluation import EvaluateConfig

    cfg = EvaluateConfig.load(config, list(sets))
    given = {"split": split, "label_policy": label_policy, "bootstrap_unit": bootstrap_unit,
             "undefined_label": undefined_label,
             "allow_label_policy_mismatch": True if allow_mismatch else None}
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        cfg = EvaluateConfig.from_dict({**cfg.to_dict(), **given}, source="command line")
    return cfg


def _summary(result):
    lines = []
    for s, v in result["test_sets"].items():
        for m, r in v["models"].items():
            a = r["macro"]["auroc"]
            lines.append(f"{s} / {m}: macro AUROC {a['estimate']:.4f} "
                         f"[{a['low']:.4f}, {a['high']:.4f}]" if a["low"] == a["low"] else
                         f"{s} / {m}: macro AUROC {a['estimate']}")
    return "\n".join(lines)


def _settings(result):
    lp, bs, mr = result["label_policy"], result["bootstrap"], result["macro_rule"]
    return (f"label policy {lp['policy']} ({lp['source']}); bootstrap unit {bs['unit']} "
            f"({bs['reason']}); undefined labels: {mr['undefined_label']}")


_common = [
    click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False),
                 help="Manifest Parquet with truth labels and sex, race, age_bin."),
    click.option("--out", required=True, type=click.Path(file_okay=False),
                 help="Report folder (report.json, report.md, report.html, figures/)."),
    click.option("--sweep", type=click.Path(exists=True, dir_okay=False),
                 help="Sweep table (CSV/Parquet) for label-efficiency curves."),
    click.option("--split", help="Evaluate only the manifest rows of this split (e.g. test)."),
    click.option("--config", type=click.Path(exists=True, dir_okay=False),
                 help="EvaluateConfig file (YAML/TOML/JSON)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override a setting, e.g. --set n_boot=200 --set min_count=16."),
    click.option("--label-policy", metavar="uncertain=0|1|ignore,blank=0|ignore",
                 help="What uncertain (-1) and blank labels are (default: the policy the "
                      "model was trained with, else uncertain=0,blank=0)."),
    click.option("--allow-label-policy-mismatch", "allow_mismatch", is_flag=True,
                 help="Evaluate under a --label-policy other than the model's, on purpose."),
    click.option("--bootstrap-unit", type=click.Choice(["patient", "image"]),
                 help="Resample patients (default, needs patient_id) or images."),
    click.option("--undefined-label", type=click.Choice(["skip", "zero"]),
                 help="Macro rule for a label with one class in a set: leave it out (skip, "
                      "default) or score it 0 (zero, torchmetrics)."),
]


def _apply(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@click.command()
@click.option("--pred", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions Parquet (image_id + one column per label).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="Classifier folder holding thresholds.json (for underdiagnosis).")
@click.option("--thresholds", type=click.Path(exists=True, dir_okay=False),
              help="thresholds.json to use instead of the model folder's.")
@click.option("--name", help="Model name in the report (default: model folder or file name).")
@_apply(_common)
def evaluate(pred, model_dir, thresholds, name, manifest, out, sweep, split, config, sets,
             label_policy, allow_mismatch, bootstrap_unit, undefined_label):
    """AUROC/AP with bootstrap CIs, subgroup AUROC, fairness and underdiagnosis gaps."""
    from rv2.evaluate.evaluation import evaluate_predictions

    result = evaluate_predictions(pred, manifest, model_dir=model_dir, thresholds=thresholds,
                                  out=out, sweep=sweep, name=name,
                                  config=_config(config, sets, split, label_policy,
                                                 allow_mismatch, bootstrap_unit, undefined_label))
    click.echo(_summary(result))
    click.echo(_settings(result))
    click.echo(f"report: {out}/report.html")


@click.command()
@click.option("--pred", "preds", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Predictions Parquet, repeated; the first is the baseline.")
@click.option("--model", "model_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Classifier folder per --pred, in the same order (for underdiagnosis).")
@click.option("--thresholds", "thresholds", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="thresholds.json per --pred, instead of --model.")
@click.option("--name", "names", multiple=True, help="Model name per --pred.")
@_apply(_common)
def compare(preds, model_dirs, thresholds, names, manifest, out, sweep, split, config, sets,
            label_policy, allow_mismatch, bootstrap_unit, undefined_label):
    """Paired comparisons: DeLong, bootstrap and permutation tests, CIs of differences."""
    from rv2.evaluate.evaluation import compare_predictions

    for opt, vals in (("--model", model_dirs), ("--thresholds", thresholds), ("--name", names)):
        if vals and len(vals) != len(preds):
            raise click.UsageError(f"give {opt} once per --pred ({len(preds)}), got {len(vals)}")
    result = compare_predictions(list(preds), manifest, model_dirs=list(model_dirs) or None,
                                 thresholds=list(thresholds) or None,
                                 names=list(names) or None, out=out, sweep=sweep,
                                 config=_config(config, sets, split, label_policy,
                                                allow_mismatch, bootstrap_unit, undefined_label))
    click.echo(_summary(result))
    for s, v in result["test_sets"].items():
        for m, c in v.get("comparisons", {}).items():
            d = c["macro"]["auroc"]
            click.echo(f"{s} / {m} - {result['baseline']}: macro dAUROC "
                       f"{d['diff']['estimate']:+.4f}, p = {d['test']['p']:.3g} "
                       f"({d['test']['method']})")
    click.echo(_settings(result))
    click.echo(f"report: {out}/report.html")
