"""`rv2 prompts`: build, expand, import-csv, export-csv (thin wrappers over the library)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_path


def _load_cfg(config, sets, extra=()):
    from rv2.prompts.config import PromptsConfig

    return PromptsConfig.load(config, overrides=list(sets) + list(extra))


def _write_table(df, out: Path) -> None:
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)


def _read_prompts(path: Path):
    import pandas as pd

    if not path.is_file():
        raise MissingInputError(f"prompts table not found: {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-Parquet
        raise UserError(f"{path}: not a readable Parquet file: {exc}") from exc


_config_opt = click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                           help="PromptsConfig file (YAML/TOML/JSON).")
_set_opt = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                        help="Override a setting, e.g. --set template.race_case=title.")


@click.group()
def prompts() -> None:
    """Prompts: impressions -> `<AGE> year old <RACE> <SEX>. <IMPRESSION>` within 77 tokens."""


@prompts.command()
@click.option("--manifest", "manifest", required=True, type=click.Path(dir_okay=False),
              help="Manifest Parquet (rv2 data index).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--allow-missing-demographics", is_flag=True,
              help="Keep rows lacking sex, age or race, with the impression alone as the prompt.")
@click.option("--views", default=None,
              help="Views to use: PA, a comma list, or all (default: all, with a warning when the "
                   "manifest mixes views; the paper uses PA).")
@_config_opt
@_set_opt
def build(manifest, out, allow_missing_demographics, views, config, sets):
    """One prompt per usable image of a manifest."""
    from rv2.config import write_artifact_meta
    from rv2.data.manifest import read_manifest
    from rv2.prompts.build import build_prompts

    extra = ["allow_missing_demographics=true"] if allow_missing_demographics else []
    if views is not None:
        extra.append(f"views={json.dumps(views)}")
    cfg = _load_cfg(config, sets, extra)
    df = read_manifest(manifest)
    table, stats = build_prompts(df, cfg, progress=True, name=str(manifest))
    out = Path(out)
    _write_table(table, out)
    write_artifact_meta(out, cfg, inputs=[manifest], extra={"stats": stats, "rows": len(table)})
    d = stats["dropped"]
    click.echo(f"{stats['rows_out']} prompts from {stats['rows_in']} rows (views "
               f"{stats['views']['setting']}: {stats['views']['used']}) -> {out}")
    click.echo(f"dropped: other view {d['other_view']}, no impression {d['no_impression']}, non-descriptive "
               f"{d['nondescriptive']}, missing demographics {d['missing_demographics']} "
               f"(sex {stats['missing']['sex']}, age {stats['missing']['age']}, race "
               f"{stats['missing']['race']}); impression-only prompts {stats['impression_only']}")
    s = stats["shortened_by"]
    click.echo(f"shortened: rule {s['rule']}, llm {s['llm']}, none {s['none']}; tokens "
               f"{json.dumps(stats['n_tokens'])}")


@prompts.command()
@click.argument("prompts_table", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--age-jitter", type=int, default=None, help="Half-width of the age window (years).")
@click.option("--seed", type=int, default=None)
@click.option("--split", "splits", multiple=True,
              help="Expand rows of this split (repeatable; default from config: train). "
                   "Use --split all for every row.")
@_config_opt
@_set_opt
def expand(prompts_table, out, age_jitter, seed, splits, config, sets):
    """8 demographic variants (2 sexes x 4 races) of every prompt."""
    from rv2.config import write_artifact_meta
    from rv2.prompts.expand import expand_prompts

    extra = []
    if age_jitter is not None:
        extra.append(f"expand.age_jitter={age_jitter}")
    if seed is not None:
        extra.append(f"expand.seed={seed}")
    if splits:
        extra.append("expand.splits=[]" if "all" in splits else
                     "expand.splits=[" + ",".join(json.dumps(s) for s in splits) + "]")
    cfg = _load_cfg(config, sets, extra)
    df = _read_prompts(Path(prompts_table))
    stats: dict = {}
    table = expand_prompts(df, cfg, progress=True, stats=stats, name=str(prompts_table))
    out = Path(out)
    _write_table(table, out)
    write_artifact_meta(out, cfg, inputs=[prompts_table], extra={"stats": stats,
                                                                  "rows": len(table)})
    click.echo(f"{stats['rows_out']} prompts from {stats['selected']} source rows "
               f"(of {stats['rows_in']}; splits {cfg.expand.splits or 'all'}; skipped without age "
               f"{stats['skipped_no_age']}; re-fitted {stats['refitted']}) -> {out}")
    for name, n in stats["per_variant"].items():
        click.echo(f"  {name:<18} {n}")


@prompts.command("import-csv")
@click.argument("csv_file", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True, help="Split to record for the rows.")
@_config_opt
@_set_opt
def import_csv(csv_file, out, split, config, sets):
    """The authors' CSV (dicom_id, gender, anchor_age, race, impression_short, prompt_variation)."""
    from rv2.config import write_artifact_meta
    from rv2.prompts.authors_csv import import_authors_csv

    cfg = _load_cfg(config, sets)
    table, counts = import_authors_csv(csv_file, split=split, template=cfg.template)
    out = Path(out)
    _write_table(table, out)
    write_artifact_meta(out, cfg, inputs=[csv_file], extra={"stats": counts, "rows": len(table)})
    click.echo(f"{counts['rows']} prompts -> {out}; template mismatches "
               f"{counts['template_mismatch']}, over 77 tokens {counts['over_limit']}")


@prompts.command("export-csv")
@click.argument("prompts_table", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@_config_opt
@_set_opt
def export_csv(prompts_table, out, config, sets):
    """Write a prompts table in the authors' CSV format."""
    from rv2.config import write_artifact_meta
    from rv2.prompts.authors_csv import export_authors_csv

    cfg = _load_cfg(config, sets)
    path = export_authors_csv(_read_prompts(Path(prompts_table)), out, template=cfg.template)
    write_artifact_meta(path, cfg, inputs=[prompts_table])
    click.echo(f"wrote {path}")
