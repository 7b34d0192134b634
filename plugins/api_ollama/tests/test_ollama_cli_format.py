"""What the model commands print: sizes, times, tables and the pull progress bar."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from npu_proxy_ollama.cli_format import (
    PullDisplay,
    human_ago,
    human_bytes,
    human_until,
    parse_time,
    table,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_sizes_in_decimal_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1_000_000) == "1.0 MB"
    assert human_bytes(4_700_000_000) == "4.7 GB"
    assert human_bytes(274_000_000) == "274 MB"


def test_times_in_words() -> None:
    assert human_ago(NOW - timedelta(seconds=30), NOW) == "30 seconds ago"
    assert human_ago(NOW - timedelta(seconds=90), NOW) == "About a minute ago"
    assert human_ago(NOW - timedelta(days=3), NOW) == "3 days ago"
    assert human_ago(NOW - timedelta(days=21), NOW) == "3 weeks ago"
    assert human_until(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"
    assert human_until(datetime(2318, 1, 1, tzinfo=UTC), NOW) == "Forever"
    assert human_until(NOW - timedelta(seconds=5), NOW) == "Stopping..."


def test_rfc3339_with_nanoseconds_parses() -> None:
    moment = parse_time("2025-06-01T11:58:00.123456789Z")
    assert moment is not None and human_ago(moment, NOW) == "About a minute ago"
    assert parse_time("yesterday") is None


def test_tables_align_columns() -> None:
    text = table(("NAME", "ID"), [("a-long-name:latest", "abc"), ("b", "def")])
    header, first, second = text.splitlines()
    assert header.index("ID") == first.index("abc") == second.index("def")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_redrawn_bar_per_file_with_speed_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    display = PullDisplay(out, tty=True, clock=clock, width=100)
    display.update({"status": "pulling manifest"})
    digest = "sha256:" + "ab" * 32
    for done in (0, 25_000_000, 50_000_000, 100_000_000):
        display.update(
            {
                "status": "pulling ababababab",
                "digest": digest,
                "total": 100_000_000,
                "completed": done,
            }
        )
        clock.now += 1.0
    display.update({"status": "verifying sha256 digest"})
    display.close()
    lines = out.getvalue().split("\n")
    assert lines[0] == "pulling manifest"
    frames = lines[1].split("\r")[1:]
    assert len(frames) == 4  # one line, redrawn in place
    assert "25%" in frames[1] and "25 MB/100 MB" in frames[1] and "25 MB/s" in frames[1]
    assert frames[1].rstrip("\x1b[K").endswith("3s")  # 75 MB left at 25 MB/s
    assert "100%" in frames[3] and "100 MB/100 MB" in frames[3]
    assert lines[2] == "verifying sha256 digest"
    assert all(len(f.replace("\x1b[K", "")) <= 100 for f in frames)


def test_a_pipe_gets_one_line_per_file() -> None:
    out = io.StringIO()
    display = PullDisplay(out, tty=False, clock=Clock())
    digest = "sha256:" + "cd" * 32
    for done in (0, 10, 20):
        display.update(
            {"status": "pulling cdcdcdcdcdcd", "digest": digest, "total": 20, "completed": done}
        )
    display.update({"status": "success"})
    display.close()
    assert out.getvalue() == "pulling cdcdcdcdcdcd (20 B)\nsuccess\n"
