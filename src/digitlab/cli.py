"""The ``digitlab`` command: helpers around the pipeline (``digitlab --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from digitlab.config import fail, setup_logging, write_params
from digitlab.errors import DigitlabError


def _params(args: argparse.Namespace) -> None:
    cfg = write_params(args.overrides)
    print(f"wrote params.yaml: dataset={cfg.dataset.name}, models={', '.join(cfg.models)}")


def _runs(args: argparse.Namespace) -> None:
    from digitlab.config import load_params, project_root
    from digitlab.runs import project_stale_runs
    from digitlab.settings import load_settings

    if not args.stale:
        raise DigitlabError("say which runs: digitlab runs --stale [--close]")
    settings = load_settings(load_params(args.params or project_root() / "params.yaml"))
    lines = project_stale_runs(settings, close=args.close)
    print("\n".join(lines) if lines else f"no stale runs (tracking.stale_after_s={settings.tracking.stale_after_s:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    params = commands.add_parser(
        "params",
        help="compose conf/ (plus Hydra overrides) into params.yaml, for a plain `dvc repro`",
        description="Compose conf/config.yaml with Hydra overrides and write params.yaml, "
        "as `dvc exp run -S` does. Example: digitlab params dataset=digits models.cnn.training.epochs=5",
    )
    params.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=digits")
    params.set_defaults(handler=_params)

    runs = commands.add_parser(
        "runs",
        help="list (and close) MLflow runs a killed training or sweep left RUNNING",
        description="List the RUNNING runs of the project's MLflow store (tracking settings from params.yaml) "
        "whose process is gone (this host) or whose heartbeat is older than tracking.stale_after_s, one line each; "
        "--close marks them KILLED (tag digitlab.killed_reason).",
    )
    runs.add_argument("--stale", action="store_true", help="the runs whose process is gone")
    runs.add_argument("--close", action="store_true", help="mark them KILLED")
    runs.add_argument("--params", default=None, help="the params file (default: params.yaml at the project root)")
    runs.set_defaults(handler=_runs)

    from digitlab.predict import add_predict_command

    add_predict_command(commands)

    from digitlab.stack.command import add_stack_command

    add_stack_command(commands)

    from digitlab.journal import add_sync_command

    add_sync_command(commands)

    from digitlab.compare import add_compare_command

    add_compare_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DigitlabError as error:
        fail(error)


if __name__ == "__main__":
    main(sys.argv[1:])
