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

    from digitlab.predict import add_predict_command

    add_predict_command(commands)
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
