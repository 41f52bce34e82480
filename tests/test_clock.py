"""roadtop.clock: timestamps in UTC to the second, durations as h:mm:ss, elapsed time never negative."""

from datetime import datetime, timedelta, timezone

import pytest

from roadtop.clock import elapsed, hms, utc_now


def test_utc_now_is_iso_to_the_second_in_utc():
    t = datetime.fromisoformat(utc_now())
    assert t.utcoffset() == timedelta(0) and t.microsecond == 0
    assert abs((datetime.now(timezone.utc) - t).total_seconds()) < 5


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (247.4, "0:04:07"), (3900, "1:05:00"),
                                           (93600, "1 day, 2:00:00"), (59.6, "0:01:00")])
def test_hms_is_timedeltas_text_to_the_second(seconds, text):
    assert hms(seconds) == text


@pytest.mark.parametrize("value", [None, float("nan"), "12", True])
def test_hms_of_what_is_not_a_number_is_the_missing_text(value):
    assert hms(value) == "" and hms(value, "?") == "?"


def test_elapsed_counts_from_an_iso_time_and_never_goes_negative():
    start = (datetime.now(timezone.utc) - timedelta(minutes=5, seconds=3)).isoformat(timespec="seconds")
    assert elapsed(start) in ("0:05:03", "0:05:04")
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert elapsed(future) == "0:00:00"
    assert elapsed(None) == "?" and elapsed("yesterday", "-") == "-"
