"""The one atomic writer: a kill mid-write leaves the old output whole, and the next write clears the leftovers."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from digitlab.io import atomic_path, atomic_write_text, replace_directory

WRITER = """
import sys, time
from pathlib import Path
from digitlab.io import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    with tmp.open("w") as handle:
        handle.write("half of the new ")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
        handle.write("content")
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_clears_its_leftover(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    atomic_write_text(target, "old, whole")
    mine = tmp_path / ".notes.tmp"  # a user's own hidden file: never touched
    mine.write_text("keep me")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert target.read_text() == "old, whole"
    assert len(list(tmp_path.glob(".report.html.*.tmp*"))) == 1, "the killed writer's temporary is left"
    atomic_write_text(target, "new, whole")
    assert target.read_text() == "new, whole"
    assert not list(tmp_path.glob(".report.html.*")), "the next write removed the leftover"
    assert mine.read_text() == "keep me"


def test_a_failed_build_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    dest = tmp_path / "prepared"
    replace_directory(dest, lambda d: (d / "a.txt").write_text("1"))

    def fail(directory: Path) -> None:
        (directory / "a.txt").write_text("2")
        raise RuntimeError("disk full")

    try:
        replace_directory(dest, fail)
    except RuntimeError:
        pass
    assert (dest / "a.txt").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_atomic_path_keeps_the_suffix_writers_need(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.keras").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
