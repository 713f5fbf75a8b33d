"""Pyflakes rules over the code: an undefined name is a crash waiting for the one path no test takes."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_undefined_names_or_unused_imports():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--output-format", "concise",
                             "proxy", "tests", "demo", "bench"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
