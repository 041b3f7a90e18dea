"""Compare every recipe of the pipeline run: ``python -m pipeline.report --params params.yaml``."""

from __future__ import annotations

from pathlib import Path

from digitlab.config import stage_main
from digitlab.report import build
from digitlab.settings import Layout, Settings


def run(settings: Settings) -> Path:
    """Build the report over every recipe under ``settings.models``."""
    return build.run(settings, Layout.for_settings(settings))


main = stage_main(run)

if __name__ == "__main__":
    main()
