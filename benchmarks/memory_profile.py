"""Where the train stage's memory goes, measured with memray (not guessed).

``benchmarks/run.py`` runs one short training of a default recipe under
``memray_command`` (``memray run --native --aggregate``); ``breakdown`` reads
back the allocations that were live at the heap's high-water mark. Each is
charged to the innermost frame of digitlab's own code on its stack (or to the
stage entry point), and split into
*imports* (module code and library initialisation, triggered from that frame)
and *work* (what that frame allocated while running). ``write_flamegraph``
draws the same capture for a person to look at.

The heap is only part of the resident set: the shared libraries' code pages
(``RssFile``; TensorFlow's alone are hundreds of MB) are mapped, not
allocated, and appear in the floor the benchmark measures separately.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

OURS = ("/digitlab/", "/pipeline/")
IMPORT_FRAMES = ("_find_and_load", "_call_with_frames_removed")


def memray_command(capture: Path, module_args: list[str], native: bool = True) -> list[str]:
    """``module_args`` (``-m module ...``) run under memray, aggregated into ``capture``.

    ``native`` records native stacks too, for the flame graph (``breakdown``
    reads Python frames only); drawing them resolves the symbols of
    TensorFlow's libraries, minutes of work that ``--quick`` skips.
    """
    return [sys.executable, "-m", "memray", "run", *(["--native"] if native else []), "--aggregate", "--quiet",
            "--output", str(capture), *module_args]  # fmt: skip


def write_flamegraph(capture: Path, html: Path) -> None:
    subprocess.run([sys.executable, "-m", "memray", "flamegraph", "--force", "--output", str(html), str(capture)],
                   check=True, capture_output=True)  # fmt: skip


def breakdown(capture: Path, top: int = 12) -> dict:
    """Live heap at its peak, grouped by digitlab frame and by imports vs work, in MB."""
    from memray import FileReader

    reader = FileReader(str(capture))
    groups: collections.Counter[tuple[str, str]] = collections.Counter()
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        stack = record.stack_trace(max_stacks=256)  # innermost frame first
        ours = next((f"{Path(file).name}:{line} {function}" for function, file, line in stack if any(part in file for part in OURS)),
                    "outside digitlab (interpreter, library threads)")  # fmt: skip
        kind = "imports" if any(function in IMPORT_FRAMES for function, _, _ in stack) else "work"
        groups[(kind, ours)] += record.size
    mb = 2**20
    totals = collections.Counter()
    for (kind, _), size in groups.items():
        totals[kind] += size
    return {
        "peak_heap_mb": reader.metadata.peak_memory / mb,
        "imports_mb": totals["imports"] / mb,
        "work_mb": totals["work"] / mb,
        "top": [{"kind": kind, "where": where, "mb": size / mb} for (kind, where), size in groups.most_common(top)],
    }
