"""User errors in input files: a clear message naming the line; a row is refused by the event
contract's own rules (the same the worker applies to the wire). Through the CLI: tests/services/test_cli_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.eventfile import BadInputFile, read_event_file

LONG = "x" * 300
# (row after the header user_id,song_id,ts,event,ms_played,event_id ; what the error must say)
BAD_ROWS = [
    ("u1,,100,play,,", "song_id is empty"),
    (",s1,100,play,,", "user_id is empty"),
    (f"{LONG},s1,100,play,,", "user_id is longer than 256 characters"),
    ("u1,s1,yesterday,play,,", "ts is not a number or date"),
    ("u1,s1,-5,play,,", "ts is negative"),
    ("u1,s1,inf,play,,", "ts is not finite"),
    ("u1,s1,4000000000,play,,", "ts is more than a day in the future"),
    ("u1,s1,100,like,,", "event must be play or skip"),
    ("u1,s1,100,play,-3,", "ms_played must be within 0..86400000"),
    ("u1,s1,100,play,lots,", "ms_played is not a number"),
    ("u1,s1,100,play,999999999999,", "ms_played must be within 0..86400000"),
    (f"u1,s1,100,play,,{LONG}", "event_id is longer than 256 characters"),
    ("u1,s1,100,play,,\"e\x01x\"", "event_id contains control characters"),
    ("u1,s1,100,play,,\"e\x85x\"", "event_id contains control characters"),  # C1, as on the wire
]
HEADER = "user_id,song_id,ts,event,ms_played,event_id\n"


def good_rows(n: int, t0: float) -> list[str]:
    return [f"u{i % 7},s{i % 11},{t0 + i},{'skip' if i % 5 == 0 else 'play'},{1000 * i},g{i}" for i in range(n)]


UNREADABLE = [
    (b"user_id,song_id,ts\nu1,s1,100\nu2,s2,\xff\xfe\n", "cannot be read"),  # invalid UTF-8
    (bytes(range(256)) * 3, "cannot be read"),  # binary garbage
    (b"", "missing column(s) user_id, song_id, ts"),
    (b"user,song\nu,s\n", "missing column(s) user_id, song_id, ts"),
    (b"user_id,song_id,ts\n", "no valid events"),
]


@pytest.mark.parametrize("row, reason", BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_every_kind_of_bad_row_is_named_with_its_line(tmp_path: Path, row: str, reason: str) -> None:
    f = tmp_path / "events.csv"
    f.write_text(HEADER + "\n".join([*good_rows(3, 1.7e9), row, *good_rows(2, 1.7e9 + 10)]) + "\n")
    with pytest.raises(BadInputFile) as info:  # what the CLI prints after "error: "
        read_event_file(f)
    message = str(info.value)
    assert message.startswith(f"{f}:5: {reason}") and "(of 1 bad rows; pass --skip-bad" in message, message


@pytest.mark.parametrize("content, expect", UNREADABLE, ids=["invalid-utf8", "garbage", "empty", "wrong-columns",
                                                             "header-only"])
def test_unreadable_files_are_one_clear_error(tmp_path: Path, content: bytes, expect: str) -> None:
    f = tmp_path / "events.csv"
    f.write_bytes(content)
    with pytest.raises(BadInputFile) as info:
        read_event_file(f, skip_bad=True)
    assert str(info.value).startswith(str(f)) and expect in str(info.value), info.value
