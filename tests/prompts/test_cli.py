"""`rv2 prompts` commands end to end on files: build, expand, import-csv, export-csv."""
from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner
from rv2.cli import main
from rv2.config import read_artifact_meta
from rv2.prompts.authors_csv import export_authors_csv, import_authors_csv


def _run(*args):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res


def test_authors_csv_round_trip_is_byte_identical(demo_csv, tmp_path):
    table, counts = import_authors_csv(demo_csv)
    assert counts == {"rows": 10, "template_mismatch": 0, "over_limit": 0}
    assert table["race"].tolist()[:5] == ["White", "Asian", "Black", "Black", "Hispanic"]
    assert table["split"].eq("train").all() and table["prompt_id"].is_unique
    out = export_authors_csv(table, tmp_path / "back.csv")
    assert out.read_bytes() == demo_csv.read_bytes()


def test_import_then_expand_demo_via_cli(demo_csv, tmp_path):
    p, e, c = tmp_path / "p.parquet", tmp_path / "e.parquet", tmp_path / "e.csv"
    r = _run("prompts", "import-csv", str(demo_csv), "--out", str(p))
    assert r.exit_code == 0, r.output
    assert "10 prompts" in r.output and "template mismatches 0" in r.output
    r = _run("prompts", "expand", str(p), "--age-jitter", "5", "--seed", "3", "--out", str(e))
    assert r.exit_code == 0, r.output
    assert "80 prompts from 10 source rows" in r.output and "female-Hispanic    10" in r.output
    ex = pd.read_parquet(e)
    assert len(ex) == 80 and ex["prompt"].str.match(r"^\d+ year old (ASIAN|BLACK|HISPANIC|WHITE) "
                                                     r"(female|male)\. ").all()
    meta = read_artifact_meta(e)
    assert meta["config"]["expand"]["seed"] == 3 and meta["stats"]["rows_out"] == 80
    assert meta["inputs"][0]["sha256"]
    r = _run("prompts", "export-csv", str(e), "--out", str(c))
    assert r.exit_code == 0, r.output
    back = pd.read_csv(c)
    assert list(back.columns) == ["dicom_id", "gender", "anchor_age", "race", "impression_short",
                                  "prompt_variation"] and len(back) == 80
    # The same seed gives the same file.
    e2 = tmp_path / "e2.parquet"
    _run("prompts", "expand", str(p), "--age-jitter", "5", "--seed", "3", "--out", str(e2))
    pd.testing.assert_frame_equal(pd.read_parquet(e2), ex)


def test_build_command(make_manifest, tmp_path):
    m = make_manifest([
        {"image_id": "a", "sex": "F", "age": 86.0, "race": "Black",
         "impression": "No evidence of acute cardiopulmonary process."},
        {"image_id": "b", "sex": None, "age": 60.0, "race": None, "impression": "Normal chest."},
    ])
    mp, out = tmp_path / "m.parquet", tmp_path / "p.parquet"
    m.to_parquet(mp, index=False)
    r = _run("prompts", "build", "--manifest", str(mp), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "1 prompts from 2 rows" in r.output and "missing demographics 1" in r.output
    assert pd.read_parquet(out)["prompt"].tolist() == [
        "86 year old BLACK female. No evidence of acute cardiopulmonary process ."]
    meta = read_artifact_meta(out)
    assert meta["config"]["config_class"] == "PromptsConfig" and meta["stats"]["rows_out"] == 1
    r = _run("prompts", "build", "--manifest", str(mp), "--out", str(out),
             "--allow-missing-demographics", "--set", "template.race_case=title")
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(out)["prompt"].tolist() == [
        "86 year old Black female. No evidence of acute cardiopulmonary process .", "Normal chest ."]
    assert json.loads(json.dumps(read_artifact_meta(out)["config"]))["allow_missing_demographics"]


def test_cli_errors_name_the_input(tmp_path):
    r = CliRunner().invoke(main, ["prompts", "build", "--manifest", str(tmp_path / "nope.parquet"),
                                  "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code != 0 and "manifest not found" in r.output and "nope.parquet" in r.output
    r = CliRunner().invoke(main, ["prompts", "expand", str(tmp_path / "x.parquet"),
                                  "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code != 0 and "prompts table not found" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,gender\nx,F\n")
    r = CliRunner().invoke(main, ["prompts", "import-csv", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "missing column(s)" in r.output and "bad.csv" in r.output
    r = CliRunner().invoke(main, ["prompts", "build", "--manifest", str(bad), "--out", "o",
                                  "--set", "nosuch=1"])
    assert r.exit_code != 0 and "unknown field" in r.output
