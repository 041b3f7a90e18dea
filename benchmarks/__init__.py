"""Benchmarks of digitlab against plain Keras: overhead, caching, memory, accuracy."""

import sys
from collections.abc import Callable
from typing import Any


def run_main(main: Callable[..., Any], argv: list[str] | None = None) -> Any:
    """A benchmark's entry point: Ctrl-C or SIGTERM (``timeout``, a closed terminal) unwinds it like an
    error, so the servers, stacks and clusters it started are stopped by their ``finally`` blocks."""
    from digitlab import interrupts

    try:
        with interrupts.signals_as_interrupt():
            return main(argv)
    except KeyboardInterrupt as stop:
        print(f"{sys.argv[0]}: {stop or 'interrupted'}; what it started is stopped", file=sys.stderr)
        raise SystemExit(130) from None
