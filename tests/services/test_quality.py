"""The code base stays ruff- and mypy-clean (run as part of the test command, so CI enforces it)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("tool, args", [("ruff", ["check", "."]), ("mypy", [])])
def test_static_checks(tool: str, args: list[str]) -> None:
    exe = shutil.which(tool, path=str(REPO / ".venv" / "bin")) or shutil.which(tool)
    cmd = [exe, *args] if exe else [sys.executable, "-m", tool, *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
