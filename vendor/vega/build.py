"""Rebuild ``dvc-plots.html``: DVC's plots page template with Vega, Vega-Lite and Vega-Embed inlined.

``dvc plots show`` fills the template (``plots.html_template`` in ``.dvc/config``) with one
``<div>`` per plot, each calling ``vegaEmbed``; DVC's own page loads the three libraries from
a CDN, so offline it draws nothing. This page carries them inside itself (no ``{scripts}``
placeholder, so DVC's CDN ``<script>`` tags are left out), and so does every page DVC writes
from it: it opens from disk, offline, wherever ``-o`` puts it.

Run it only to change a version (then commit the new template)::

    python vendor/vega/build.py          # needs npm and the npm registry

It fetches each pinned package with ``npm pack``, checks the tarball against the pinned
integrity hash (sha512, as npm's lockfiles record it) and copies the package's minified UMD
build into the page. Versions: the newest of the majors DVC's renderer (dvc-render 1.0,
vega 5 / vega-lite 5 / vega-embed 6) and its specs (``$schema`` vega-lite/v5.json) are made for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "dvc-plots.html"
# name, version, npm integrity (sha512 of the tarball), file inlined
PACKAGES = (
    ("vega", "5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==", "build/vega-embed.min.js"),
)  # fmt: skip

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- digitlab: DVC's plots page with its libraries inlined, so that it draws offline.
         Built by vendor/vega/build.py from the npm registry: {versions}.
         Each is BSD-3-Clause licensed: vendor/vega/LICENSE.* -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(name: str, version: str, integrity: str, member: str, work: Path) -> str:
    """The text of ``member`` in the npm tarball of ``name@version``, after checking the tarball's integrity."""
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--json"], cwd=work, capture_output=True, text=True, check=True).stdout
    tarball = work / json.loads(out)[0]["filename"]
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != expected:
        sys.exit(f"{name}@{version}: integrity {algorithm}-{actual} is not the pinned {integrity}")
    with tarfile.open(tarball) as archive:
        text = archive.extractfile(f"package/{member}").read().decode("utf-8")
    for marker in ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):  # would break the page or DVC's filling
        if marker in text:
            sys.exit(f"{name}@{version}/{member} contains {marker!r}: it can't be inlined as it is")
    return text


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        scripts = [
            f"    <script>/* {name}@{version} {member} (npm) */\n{fetch(name, version, integrity, member, Path(work))}\n    </script>"
            for name, version, integrity, member in PACKAGES
        ]
    versions = ", ".join(f"{name}@{version}" for name, version, _, _ in PACKAGES)
    TEMPLATE.write_text(PAGE.format(versions=versions, scripts="\n".join(scripts)), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size // 1024} KiB): {versions}")


if __name__ == "__main__":
    main()
