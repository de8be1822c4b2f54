"""`rv2 serve` on the command line: help, and one-line errors for bad input."""
from __future__ import annotations

from click.testing import CliRunner
from rv2 import cli


def test_serve_help_lists_tritons_knob_names():
    res = CliRunner().invoke(cli.main, ["serve", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--max-batch-size", "--preferred-batch-size", "--max-queue-delay-microseconds",
                "--max-queue-size", "--max-body-bytes", "--token-file", "--engines", "--decoder",
                "--instances", "--tune-batch-size"):
        assert opt in res.output


def test_serve_bad_model_folder_is_one_line_exit_2(tmp_path):
    res = CliRunner().invoke(cli.main, ["serve", "--model", str(tmp_path / "nope"), "--http-port", "0",
                                        "--grpc-port", "-1"])
    assert res.exit_code == 2 and "model folder not found" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_serve_missing_engines_folder_is_one_line(clf_dir, tmp_path):
    res = CliRunner().invoke(cli.main, ["serve", "--model", str(clf_dir), "--engines",
                                        str(tmp_path / "missing"), "--http-port", "0"])
    assert res.exit_code == 2 and "engines folder not found" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_serve_instances_below_one_is_one_line(clf_dir):
    res = CliRunner().invoke(cli.main, ["serve", "--model", str(clf_dir), "--instances", "0",
                                        "--http-port", "0", "--grpc-port", "-1"])
    assert res.exit_code == 2 and "--instances must be at least 1" in res.output
