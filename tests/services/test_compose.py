"""docker-compose.yml cannot run here (no Docker engine); it is validated by Debian's docker-compose
(`docker-compose config`, installed by .ci/run) and checked against the settings it must use."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_validates() -> None:
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
