"""The unit tier runs in-process: a test that starts a process (a broker, redis-server, a worker,
the CLI, a tool) belongs in tests/services/, and fails here."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a unit test started a process ({args!r}); it belongs in tests/services/")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
