"""The load benchmark's count check: exactly one result event and one history row per event."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from load_bench import count_check  # noqa: E402


def test_all_present_once_is_ok() -> None:
    check = count_check(["a", "b"], ["b", "a", "other"], ["a", "b"])
    assert check["ok"] and check["results"] == 2 and check["history_rows"] == 2


def test_missing_and_duplicates_are_named() -> None:
    check = count_check(["a", "b", "c", "c"], ["a", "a", "b"], ["b", "b"])
    assert not check["ok"]
    assert check["missing_result"] == ["c"] and check["duplicate_result"] == {"a": 2}
    assert check["missing_history_row"] == ["a", "c"] and check["duplicate_history_row"] == {"b": 2}
    assert check["duplicate_event_ids_produced"] == ["c"]
