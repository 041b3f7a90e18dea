"""benchmarks/RESULTS.md is shared: benchmarks/run.py writes it, other scripts keep a section of their own in it."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) in place of the file's previous one, else append it."""
    text = path.read_text() if path.is_file() else "# digitlab benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
