"""`rv2 data index` and `rv2 data stats`."""
from __future__ import annotations

import sys

import click


@click.group()
def data() -> None:
    """Datasets: index official layouts into one manifest; statistics tables."""


@data.command("index")
@click.option("--dataset", required=True,
              type=click.Choice(["mimic", "chexpert", "chexpert-plus", "nih", "padchest", "vindr",
                                 "openi"]))
@click.option("--metadata", "metadata", multiple=True, required=True,
              type=click.Path(exists=True), help="A metadata file (repeat); see `rv2.data.index`.")
@click.option("--root", type=click.Path(exists=True, file_okay=False),
              help="Folder the image paths are relative to (and MIMIC's reports).")
@click.option("--views", default=None, help="PA, a comma list (PA,AP) or all (default: all; the paper uses PA). "
                   "The sidecar records the filter and the views present.")
@click.option("--verify-files", is_flag=True, help="Decode every image; drop and list bad ones.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Manifest to write (.parquet).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="IndexConfig YAML/TOML.")
@click.option("--set", "overrides", multiple=True, help="Override a setting: key=value.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index_cmd(dataset, metadata, root, views, verify_files, out, config_path, overrides, quiet):
    """Read a dataset's published metadata into a Parquet manifest + sidecar."""
    from rv2.data.config import IndexConfig
    from rv2.data.index import index_dataset
    from rv2.data.manifest import format_consort, sidecar_path, write_manifest

    cfg = IndexConfig.load(config_path, overrides)
    if views is not None:
        cfg.views = views
    if verify_files:
        cfg.verify_files = True
    cfg.dataset = dataset
    df, side = index_dataset(dataset, list(metadata), root, config=cfg, progress=not quiet)
    inputs = list(metadata)
    write_manifest(df, out, side, config=cfg, inputs=inputs)
    click.echo(format_consort(side["exclusions"]))
    if side.get("bad_files"):
        click.echo(f"\n{len(side['bad_files'])} image(s) left out:")
        for b in side["bad_files"][:20]:
            click.echo(f"  {b['path']}: {b['reason']}")
        if len(side["bad_files"]) > 20:
            click.echo(f"  ... ({len(side['bad_files']) - 20} more in {sidecar_path(out)})")
    if side.get("ages_out_of_range"):
        click.echo(f"\n{side['ages_out_of_range']} age(s) outside the schema's range were left "
                   "empty (sidecar: ages_out_of_range)")
    miss = side.get("missing_files")
    if miss and miss["count"]:
        click.echo(f"\nwarning: {miss['count']} of {len(df)} image file(s) do not exist under "
                   f"{root} (e.g. {miss['examples'][0]}); rerun with --verify-files to locate "
                   "moved files by name and leave out missing or unreadable ones", err=True)
    elif root is None and not cfg.verify_files:
        click.echo("\nimage files not checked (no --root)")
    c = side["counts"]
    click.echo(f"\nwrote {out}: {c['rows']} images, {c['patients']} patients, "
               f"{c['studies']} studies; splits {c['by_split']}; views {c['by_view']}")
    click.echo(f"views: {side['view_filter']}; present {side['views_present']}")
    click.echo(f"sidecar: {sidecar_path(out)}")


@data.command("stats")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the CSV tables (default: MANIFEST_stats/ beside it).")
def stats_cmd(manifest, out_dir):
    """Counts and percentages by sex, age bin, race, label and split; intersections."""
    from pathlib import Path

    from rv2.data.manifest import read_manifest
    from rv2.data.stats import (
        demographics_table,
        format_wide,
        intersectional_table,
        write_stats,
    )

    df = read_manifest(manifest)
    out = Path(out_dir) if out_dir else Path(manifest).with_name(Path(manifest).stem + "_stats")
    paths = write_stats(df, out, inputs=[manifest])
    click.echo("Images by split (cf. Supplementary Table 2)")
    click.echo(format_wide(demographics_table(df), ["variable", "level"]))
    click.echo("\nIntersectional counts (cf. Supplementary Table 3)")
    click.echo(format_wide(intersectional_table(df), ["pair", "sex", "level"]))
    click.echo("\nwrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(data())
