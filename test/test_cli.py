"""The `ssm-perception` command line: one entry point, validation with one-line errors."""

import subprocess
import sys

from typer.testing import CliRunner

from ssm_perception.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "config" in res.output


def test_config_prints_defaults_and_rejects_bad_files(tmp_path):
    res = runner.invoke(app, ["config"])
    assert res.exit_code == 0 and "ros__parameters" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  resolution: 0\n")
    res = runner.invoke(app, ["config", str(bad)])
    assert res.exit_code == 2
    assert "grid.resolution" in res.output


def test_console_script_is_installed():
    exe = subprocess.run([sys.executable, "-m", "ssm_perception.cli", "--help"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert exe.returncode == 0, exe.stderr
    assert "ssm-perception" in exe.stdout or "Usage" in exe.stdout
