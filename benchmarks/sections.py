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


def replace_section(text: str, section: str, start: str, end: str) -> str:
    """``text`` with ``section`` (which begins with ``start`` and ends with ``end``) in place of its previous one, else appended."""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + section.rstrip("\n") + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + section


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Put ``section`` in place of the file's previous one (:func:`replace_section`)."""
    text = path.read_text() if path.is_file() else "# digitlab benchmarks\n"
    path.write_text(replace_section(text, section, start, end))
