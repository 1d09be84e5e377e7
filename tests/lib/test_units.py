"""fleet.lib.units, the one way Fleet writes sizes, durations and percentages, and fleetFormat in
static/fleet/ui.js, which must write the same strings in the browser."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.lib.units import (
    format_bytes,
    format_duration,
    format_percent,
    format_relative,
    parse_size,
    percent,
)
from tests.browser import launch, needs_chromium

UI_JS = Path(__file__).resolve().parents[2] / "static" / "fleet" / "ui.js"
BYTES = [None, "", "junk", True, 0, 1, 1023, 1024, 1536, 1024**2 - 1, 80 * 1024**3,
         3 * 1024**4, 5 * 1024**6, 2**70, -1, -5000]
SECONDS = [None, "junk", 0, 4.9, 42, 59.9, 60, 299, 3599, 3600, 86399, 86400, 2 * 86400 + 5, -90]
PERCENT_VALUES = [None, "junk", 0, 42, 42.4, 99.99, 100]
PROGRESS = [(0, 0, 0), (0, 0, 100), (5, 10, 0), (1, 3, 0), (999, 1000, 0), (11, 10, 0), (-1, 10, 0)]


def test_format_bytes() -> None:
    assert format_bytes(None) == "—"
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(80 * 1024**3) == "80.0 GiB"
    assert format_bytes(3 * 1024**4) == "3.0 TiB"
    assert format_bytes(2**70) == "1024.0 EiB"  # the largest unit, never an index error
    assert format_bytes("junk") == format_bytes(float("nan")) == format_bytes(True) == "—"


def test_parse_size() -> None:
    assert parse_size("1048576") == 1048576
    assert parse_size("512M") == parse_size("512 MiB") == parse_size("512mb") == 512 * 1024**2
    assert parse_size("1.5T") == int(1.5 * 1024**4)
    assert parse_size("2P") == 2 * 1024**5
    for bad in ("", "-1", "2X", "G", "1e9"):
        with pytest.raises(ValueError, match="is not a size; use bytes or a number with K, M, G, T or P"):
            parse_size(bad)


def test_format_duration_and_relative() -> None:
    assert [format_duration(s) for s in (0, 42, 60, 299, 3600, 86399, 2 * 86400)] == [
        "0 s", "42 s", "1 min", "4 min", "1 h", "23 h", "2 d"]
    assert format_duration(None) == "—"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert format_relative(None) == "never"
    assert format_relative(now, now) == "just now"
    assert format_relative(now - timedelta(seconds=42), now) == "42 s ago"
    assert format_relative(now - timedelta(minutes=5), now) == "5 min ago"
    assert format_relative(now - timedelta(hours=3), now) == "3 h ago"
    assert format_relative(now - timedelta(days=2), now) == "2 d ago"
    assert format_relative(now + timedelta(minutes=15, seconds=1), now) == "in 15 min"
    assert format_relative(datetime.now(UTC) - timedelta(hours=2)) == "2 h ago"


def test_percent() -> None:
    assert percent(0, 0) == 0 and percent(0, 0, empty=100) == 100
    assert percent(1, 3) == 33 and percent(999, 1000) == 99  # never shows 100 before it is done
    assert percent(11, 10) == 100 and percent(-1, 10) == 0
    assert format_percent(42) == "42 %" and format_percent(42.46, 1) == "42.5 %" and format_percent(None) == "—"


def test_units_imports_nothing_of_django() -> None:
    """The node agent imports fleet.lib.units: it must stay plain Python."""
    code = "import sys, fleet.lib.units; print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=UI_JS.parents[2], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(UI_JS.parents[2])})
    assert out.stdout.strip() == "[]"


@pytest.mark.browser
@needs_chromium
def test_the_browser_writes_the_same_strings() -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    deltas = [0, 4, 42, 300, 3 * 3600, 2 * 86400, -901]
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.set_content("<!doctype html><title>units</title>")
            page.add_script_tag(content=UI_JS.read_text(encoding="utf-8"))
            got = page.evaluate(
                """([bytes, seconds, pcts, progress, deltas, now]) => ({
                    bytes: bytes.map(fleetFormat.bytes),
                    nan: [fleetFormat.bytes(NaN), fleetFormat.bytes(Infinity)],
                    durations: seconds.map(fleetFormat.duration),
                    percents: pcts.map((v) => fleetFormat.formatPercent(v)),
                    progress: progress.map(([part, whole, empty]) => fleetFormat.percent(part, whole, empty)),
                    relative: deltas.map((d) => fleetFormat.relative(new Date(now - d * 1000), now)),
                    never: fleetFormat.relative(null),
                })""",
                [BYTES, SECONDS, PERCENT_VALUES, PROGRESS, deltas, now.timestamp() * 1000])
        finally:
            browser.close()
    assert got["bytes"] == [format_bytes(v) for v in BYTES], json.dumps(got["bytes"], ensure_ascii=False)
    assert got["nan"] == [format_bytes(float("nan")), format_bytes(float("inf"))]
    assert got["durations"] == [format_duration(v) for v in SECONDS]
    assert got["percents"] == [format_percent(v) for v in PERCENT_VALUES]
    assert got["progress"] == [percent(part, whole, empty) for part, whole, empty in PROGRESS]
    assert got["relative"] == [format_relative(now - timedelta(seconds=d), now) for d in deltas]
    assert got["never"] == format_relative(None)
