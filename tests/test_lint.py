"""The code base passes its lint configuration (ruff.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    if shutil.which('ruff') is None and not (Path(sys.executable).parent / 'ruff').exists():
        pytest.fail('ruff is not installed; run tools/setup_env.sh (requirements/tests.txt)')
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '.'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
