"""Times as the project writes them: every timestamp in UTC, ISO 8601 to the second; every duration h:mm:ss."""

import math
from datetime import datetime, timedelta, timezone

__all__ = ["elapsed", "hms", "utc_clock", "utc_now", "utc_text"]


def utc_now() -> str:
    """The time now, in UTC, as ISO 8601 to the second (2026-12-01T22:10:05+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def utc_clock() -> str:
    """The time of day now, in UTC, to the second, as a live table's heading says it ('22:10:05 UTC')."""
    return f"{datetime.now(timezone.utc):%H:%M:%S} UTC"


def utc_text(when, missing: str = "unknown") -> str:
    """An aware datetime as 'YYYY-MM-DD HH:MM UTC' (converted to UTC first); `missing` for None."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if when else missing


def hms(seconds, missing: str = "") -> str:
    """Seconds as h:mm:ss, timedelta's way, to the second ('0:04:07', '1 day, 2:00:00'); `missing` when not a
    number (None, NaN, text)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return missing
    return str(timedelta(seconds=round(seconds)))


def elapsed(since, missing: str = "?") -> str:
    """h:mm:ss from the ISO time `since` (with its zone) to now, never negative; `missing` when unreadable."""
    try:
        took = datetime.now(timezone.utc) - datetime.fromisoformat(since)
    except (TypeError, ValueError):
        return missing
    return hms(max(0.0, took.total_seconds()))
