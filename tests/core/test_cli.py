import json
import subprocess
import sys

from click.testing import CliRunner
from rv2 import cli


def test_help_lists_every_registered_command():
    res = CliRunner().invoke(cli.main, ["--help"])
    assert res.exit_code == 0
    for name in cli.COMMANDS:
        assert name in res.output
    # every registered command resolves to a click command
    for name in cli.COMMANDS:
        assert cli.main.get_command(None, name) is not None, name


def test_doctor_reports_and_exits_zero(tmp_path, monkeypatch):
    (tmp_path / "resnet_race_detection_val-loss_0.157_mimic_public.pt").write_bytes(b"x")
    monkeypatch.setenv("RV2_WEIGHTS_DIR", str(tmp_path))
    res = CliRunner().invoke(cli.main, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["core"]["numpy"] and rep["torch"]["version"]
    assert rep["native"]["target"] in ("cpu", "cuda", "none")
    assert "CPUExecutionProvider" in rep["onnxruntime_providers"]["usable"]
    assert rep["weights"]["race"].startswith(str(tmp_path))
    assert rep["weights"]["age"] is None
    text = CliRunner().invoke(cli.main, ["doctor"]).output
    assert "status: ok" in text and "TensorRT" in text and "DALI" in text


def test_doctor_console_script():
    r = subprocess.run([sys.executable, "-m", "rv2.cli", "doctor"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "native (rv2._C)" in r.stdout
