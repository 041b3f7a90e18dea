"""Fonts for the figures: a class name is drawn in its own letters, not as empty boxes.

Matplotlib draws text with DejaVu Sans, which has the Latin, Greek and Cyrillic alphabets but no
Chinese, Japanese or Korean characters (nor many other scripts): a folder dataset whose classes
are named in them got a box for every character, and a matplotlib warning per character and figure.
Each figure function passes its names through :func:`cover` before it creates its figure (matplotlib
fixes a text's fonts when it creates the text, and a figure creates its titles, axis labels and tick
labels with itself), and so does :func:`digitlab.evaluation.plots.plain_text` with every text it is
given: characters the fonts in use lack are looked up in the fonts installed on the machine (read from the font files themselves, so a font installed after
matplotlib built its font cache counts too), and the first font that has them joins matplotlib's font
list, where it serves as a fallback (matplotlib draws each character with the first font in the list
that has it). Characters no installed font has are named once per process, in one log line that says
what to install; matplotlib's own warning for them is silenced.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import matplotlib
from matplotlib import font_manager, ft2font

log = logging.getLogger(__name__)

_covered: set[int] = set()  # code points the fonts in matplotlib's list draw (filled on first use)
_reported: set[str] = set()  # characters no installed font has, already named in the log
# Emphasis in a font file's name: a regular face of a family is tried before its bold or italic ones.
_STYLED = ("bold", "italic", "oblique", "light", "thin", "black", "heavy")


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """The code points the font file at ``path`` has a glyph for (none when it cannot be read)."""
    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # not a font FreeType reads
        return frozenset()


def _in_use() -> list[str]:
    """The files of the fonts matplotlib's font list resolves to now, in order."""
    paths = []
    for family in matplotlib.rcParams["font.family"]:
        try:
            paths.append(font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False))
        except ValueError:  # a family set in a matplotlibrc that is not installed: matplotlib skips it too
            continue
    return paths


def _candidates() -> list[str]:
    """Installed font files, matplotlib's own and the system's, regular faces first."""
    paths = {entry.fname for entry in font_manager.fontManager.ttflist} | set(font_manager.findSystemFonts())
    # Last Resort (shipped with matplotlib) has a glyph for every character: a box naming its Unicode block.
    paths = {path for path in paths if "lastresort" not in Path(path).name.lower()}
    return sorted(paths, key=lambda path: (any(word in path.lower() for word in _STYLED), path))


def _needs_no_glyph(character: str) -> bool:
    return character.isspace() or not character.isprintable()


def cover(*texts: object) -> None:
    """Make sure matplotlib's fonts draw every character of ``texts`` in the texts created from now on: add
    an installed font that has the missing ones to its font list, or say once, in the log, which characters
    no installed font has. (Matplotlib fixes a text's fonts when it creates the text: a figure's titles,
    axis labels and tick labels when it creates the figure.)"""
    texts = [str(text) for text in texts]
    text = "".join(texts)
    if text.isascii():  # every font matplotlib falls back to has ASCII
        return
    if not _covered:
        for path in _in_use():
            _covered.update(_charmap(path))
    missing = {character for character in text if not _needs_no_glyph(character) and ord(character) not in _covered}
    missing -= _reported
    if not missing:
        return
    for path in _candidates():
        has = {character for character in missing if ord(character) in _charmap(path)}
        if not has:
            continue
        font_manager.fontManager.addfont(path)  # known to matplotlib by its family name from now on
        family = font_manager.ttfFontProperty(ft2font.FT2Font(path)).name
        matplotlib.rcParams["font.family"] = [*matplotlib.rcParams["font.family"], family]
        _covered.update(_charmap(path))
        log.debug("figures draw %s with %s (%s)", "".join(sorted(has)), family, path)
        missing -= has
        if not missing:
            return
    _reported.update(missing)
    shown = "".join(sorted(missing))
    holders = ", ".join(repr(text) for text in texts if missing & set(text))
    log.warning(
        "no installed font has the characters %s (in %s): figures show them as boxes; install a font that has them "
        "(Chinese, Japanese, Korean: Debian's fonts-noto-cjk or fonts-wqy-microhei)", shown, holders,
    )  # fmt: skip
    for character in missing:  # said above, once: not again per figure and character
        warnings.filterwarnings("ignore", message=rf"Glyph {ord(character)} \(", category=UserWarning)
