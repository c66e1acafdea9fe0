"""Tracer notes for the tests of bench.trace_write and bench.trace_read:
each process's notes written as its tracer would, from times in µs."""

from __future__ import annotations

from pathlib import Path


def write_notes(directory: Path, texts: dict[int, str]) -> None:
    """One notes file per pid; a line's leading integer (µs) becomes the
    tracer's seconds, any other line (one cut short) is written as it is."""
    for pid, text in texts.items():
        lines = []
        for line in text.splitlines():
            parts = line.split(" ")
            if parts[0].isdigit():
                parts[0] = f"{int(parts[0]) / 1e6:.7f}"
            lines.append(" ".join(parts))
        (directory / f"trace.{pid}").write_text("\n".join(lines) + "\n")
