"""benchmarks/RESULTS.md is shared: benchmarks/run.py writes it, other scripts keep a section of their own in it."""

from __future__ import annotations

import re
from pathlib import Path

# A section: ``<!-- name[: script] -->`` ... ``<!-- /name -->``, each marker on a line of its own.
SECTION = re.compile(r"^<!-- ([\w-]+)(?:: [^>]*)? -->\n.*?^<!-- /\1 -->$", re.MULTILINE | re.DOTALL)


def sections(path: Path) -> list[str]:
    """The other scripts' sections in ``path`` (none when it does not exist), in order."""
    return [match.group(0) for match in SECTION.finditer(path.read_text())] if path.is_file() else []


def with_sections(text: str, path: Path) -> str:
    """``text`` (benchmarks/run.py's own part) followed by the sections ``path`` holds now, so a rerun keeps them."""
    kept = sections(path)
    return text.rstrip("\n") + "\n" + "".join(f"\n{section}\n" for section in kept)


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) in place of the file's previous one, else append it."""
    text = path.read_text() if path.is_file() else "# digitlab benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
