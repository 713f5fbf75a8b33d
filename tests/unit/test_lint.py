"""The checks that help a developer help themselves, run as tests so CI runs them.

- ruff with the rule set in pyproject.toml (pyflakes, pycodestyle, bugbear, simplifications, pyupgrade, ruff's own):
  an undefined name is a crash waiting for the one path no test takes;
- ``mypy --strict`` over the package (configured in pyproject.toml): a wrong type is the same crash, found sooner.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                             "proxy", "tests", "demo", "bench"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr



def test_mypy_strict_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
