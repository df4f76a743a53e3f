"""Durations as a reader reads them, for progress lines and estimates."""

from __future__ import annotations


def clock(seconds: float) -> str:
    """`42 s`, `4:05` (minutes and seconds), `1:02:10` (hours): a duration, rounded to the second."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
