"""User errors in CLI input files: a clear message naming the line (or skipped and counted with
--skip-bad), exit code 2, never a traceback, and nothing half-done."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offline.eventlog import EventLog
from stream.kafka_io import ensure_topics, read_topic
from tests.services.processes import run_cli
from tests.unit.test_input_files import BAD_ROWS, HEADER, LONG, UNREADABLE, good_rows


def assert_clear(out, code: int = 2) -> str:  # type: ignore[no-untyped-def]
    assert out.returncode == code, (out.returncode, out.stdout[-1000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    return out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""


@pytest.mark.parametrize("row, reason", [BAD_ROWS[0], BAD_ROWS[6], BAD_ROWS[12]], ids=["empty", "future", "control"])
def test_import_names_the_bad_line_and_appends_nothing(make_settings, tmp_path: Path, row: str, reason: str
                                                       ) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "events.csv"
    f.write_text(HEADER + "\n".join([*good_rows(3, 1.7e9), row, *good_rows(2, 1.7e9 + 10)]) + "\n")
    line = assert_clear(run_cli(settings, "import", "events", str(f)))
    assert line.startswith(f"error: {f}:5: {reason}"), line
    assert "--skip-bad" in line
    assert EventLog(settings.stream.log_dir).segments() == [], "nothing half-imported"


def test_import_skip_bad_counts_every_bad_row(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "events.csv"
    good = good_rows(20, 1.7e9)
    f.write_text(HEADER + "\n".join(good[:10] + [r for r, _ in BAD_ROWS] + good[10:]) + "\n")
    out = run_cli(settings, "import", "events", str(f), "--skip-bad")
    assert_clear(out, 0)
    said = " ".join(out.stdout.split())  # rich wraps lines at the terminal width
    assert "appended 20 events" in said and f"skipped {len(BAD_ROWS)} bad rows" in said, said
    logged = EventLog(settings.stream.log_dir).read()
    assert sorted(logged.event_ids) == sorted(f"g{i}" for i in range(20))


@pytest.mark.parametrize("content, expect", [UNREADABLE[1], UNREADABLE[4]], ids=["garbage", "header-only"])
def test_unreadable_files_through_the_cli(make_settings, tmp_path: Path, content: bytes, expect: str
                                          ) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "events.csv"
    f.write_bytes(content)
    line = assert_clear(run_cli(settings, "import", "events", str(f), "--skip-bad"))
    assert line.startswith(f"error: {f}") and expect in line, line


def test_replay_refuses_a_bad_file_before_sending_anything(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    cfg = settings.stream
    ensure_topics(cfg)
    now = time.time()
    f = tmp_path / "replay.csv"
    # rows the file reader once let through but the wire contract refuses: the replay used to
    # stop half-way with an error naming no line
    rows = [*good_rows(5, now - 100), f"u1,s1,{now + 3 * 86400},play,,", f"u1,s1,{now},play,,{LONG}"]
    f.write_text(HEADER + "\n".join(rows) + "\n")
    line = assert_clear(run_cli(settings, "replay", str(f), "--rate", "0"))
    assert line.startswith(f"error: {f}:7: ts is more than a day in the future (of 2 bad rows"), line
    assert read_topic(cfg, cfg.events_topic, timeout=3) == [], "nothing was sent"
    out = run_cli(settings, "replay", str(f), "--rate", "0", "--skip-bad")
    assert_clear(out, 0)
    said = " ".join(out.stdout.split())
    assert "sent 5 events" in said and "skipped 2 bad rows" in said, said
    sent = read_topic(cfg, cfg.events_topic, timeout=10)
    assert sorted(r.key for r in sent) == sorted(f"u{i % 7}".encode() for i in range(5))


def test_evaluate_bad_rows_and_empty_input_are_clear_errors(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "eval.csv"
    f.write_text(HEADER + "\n".join([*good_rows(3, 1.7e9), "u1,s1,soon,play,,"]) + "\n")
    line = assert_clear(run_cli(settings, "evaluate", str(f)))
    assert line.startswith(f"error: {f}:5: ts is not a number or date"), line
    f.write_text(HEADER + "u1,,100,play,,\nu2,s2,later,play,,\n")
    line = assert_clear(run_cli(settings, "evaluate", str(f), "--skip-bad"))
    assert line == f"error: {f}: no valid events (2 bad rows skipped)", line
    out = run_cli(settings, "evaluate", str(f), "--k", "0")
    assert_clear(out)
    assert "--k must be in 1..500" in out.stderr


def test_evaluate_unknown_protocol_is_a_clear_error(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "eval.csv"
    f.write_text(HEADER + "\n".join(good_rows(30, 1.7e9)) + "\n")
    assert_clear(run_cli(settings, "evaluate", str(f), "--protocol", "nope"))


def test_evaluate_loo_on_too_little_data_is_a_clear_error(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    f = tmp_path / "eval.csv"
    f.write_text(HEADER + "\n".join(good_rows(3, 1.7e9)) + "\n")
    assert_clear(run_cli(settings, "evaluate", str(f), "--protocol", "loo"))
