"""``digitlab predict``: classify the user's own images (to be built in the evaluate/report issue)."""

from __future__ import annotations

import argparse


def add_predict_command(commands: argparse._SubParsersAction) -> None:  # filled in by the predict work
    del commands
