"""The ``digitlab stack`` subcommand."""

from __future__ import annotations

import argparse
import logging

from digitlab.stack.options import add_arguments, parse


def _stack(args: argparse.Namespace) -> None:
    from digitlab.config import home_root
    from digitlab.stack.down import down, status
    from digitlab.stack.layout import Layout
    from digitlab.stack.up import up

    logging.getLogger("botocore").setLevel(logging.WARNING)  # "found credentials in ..." on every client
    project = home_root()
    action, options = parse(args, project / ".digitlab" / "stack")
    if action == "up":
        up(options, project)
    elif action == "down":
        down(Layout(options.dir))
    else:
        raise SystemExit(status(Layout(options.dir)))


def add_stack_command(commands) -> None:
    """``digitlab stack up|down|status``."""
    stack = commands.add_parser(
        "stack",
        help="start, stop or check the team stack: MLflow server + PostgreSQL + S3 bucket (also the DVC remote)",
        description="up: start PostgreSQL, an S3 server (moto) with the bucket, and an MLflow server with basic auth "
        "(reusing what runs), and make the bucket the project's DVC remote (.dvc/config.local). down: stop them all "
        "(data kept: PostgreSQL's folder, the bucket's snapshot). status: one line per service; exit 0 if all are up.",
    )
    add_arguments(stack)
    stack.set_defaults(handler=_stack)
