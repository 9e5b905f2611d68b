"""How parts of a status entry are shown, the same in the status and verify answers and the token."""

from __future__ import annotations

from typing import Any

from cache.entry import StatusEntry


def last_test(entry: StatusEntry, now: int) -> dict[str, Any] | None:
    """The last nucleic-acid test, or None when there is none."""
    if entry.last_test_at is None:
        return None
    return {
        "sampled_at": entry.last_test_at,
        "result": entry.last_test_result,
        "hours_ago": (now - entry.last_test_at) // 3600,
    }


def vaccination(entry: StatusEntry) -> dict[str, Any]:
    return {"doses": entry.vaccine_doses, "complete": entry.vaccine_complete}


def negative_test_at(entry: StatusEntry) -> int | None:
    """When the last test was sampled, if it was negative: a negative test before a positive one is
    no evidence for a checkpoint (the token's `nt` claim)."""
    return entry.last_test_at if entry.last_test_result == "negative" else None
