"""Ctrl-C and SIGTERM as one recorded stop of the command.

The handler raises :class:`KeyboardInterrupt` where the main thread is, and
also records the stop, because an exception raised at an arbitrary point does
not always arrive as itself:

- inside OmegaConf, a KeyboardInterrupt leaves a half-set node behind, and the
  next step fails with an ``AttributeError`` (Hydra composes a sweep's next job
  there, between two jobs, and would print it as a traceback): while the main
  thread is in such a module the stop waits, and the signal is sent again a
  moment later, until it lands outside;
- Python drops an exception raised inside a ``__del__`` or a weakref callback
  (TensorFlow runs many between two batches): :func:`raise_if_stopped`, at the
  next batch, raises the recorded stop again;
- any other library may still turn it into an error of its own:
  :func:`surfaced` turns an error that follows a stop back into the stop.

So a stopped command always ends with its "run the same command again" line,
never a traceback. A signal the process was started to ignore stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Modules that an exception raised mid-update leaves inconsistent: a stop waits until the main thread is out.
FRAGILE_MODULES = ("omegaconf",)
RESEND_S = 0.05

_reason: str | None = None  # the stop asked of this process, once a signal came
_depth = 0  # nested signals_as_interrupt() blocks (a sweep, then its job's training)
_resend_pending = False  # a stop that waits for the main thread to leave a fragile module


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _reason, _resend_pending
    _reason = "" if signum == signal.SIGINT else f"stopped by signal {signal.Signals(signum).name}"
    if _inside(frame, FRAGILE_MODULES):
        if not _resend_pending:
            _resend_pending = True
            resend = threading.Timer(RESEND_S, _resend, (signum,))
            resend.daemon = True
            resend.start()
        return
    _resend_pending = False
    raise KeyboardInterrupt(_reason)


def _resend(signum: int) -> None:
    if _depth > 0 and _resend_pending:  # still inside the handled block, and the stop not raised meanwhile
        os.kill(os.getpid(), signum)


def _inside(frame: FrameType | None, modules: tuple[str, ...]) -> bool:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.partition(".")[0] in modules:
            return True
        frame = frame.f_back
    return False


def stop_reason() -> str | None:
    """None until a signal asked this command to stop; then its reason ('' for Ctrl-C)."""
    return _reason


def raise_if_stopped() -> None:
    if _reason is not None:
        raise KeyboardInterrupt(_reason)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`KeyboardInterrupt` and are recorded.

    The outermost block starts with no stop recorded; on leaving it, the handlers
    that were there before are put back. Outside the main thread it does nothing.
    """
    global _reason, _depth, _resend_pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _reason, _resend_pending = None, False
    previous = {signum: signal.signal(signum, _interrupt) for signum in SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def surfaced() -> Iterator[None]:
    """An error raised after a stop was asked leaves the block as that stop (:class:`KeyboardInterrupt`)."""
    try:
        yield
    except Exception as error:
        if _reason is None:
            raise
        raise KeyboardInterrupt(_reason) from error


def run_command(main: Callable[[], Any], prog: str, then: str) -> Any:
    """A command's ``main`` within :func:`signals_as_interrupt`: a stop, even one a library swallowed,
    ends it with one line, ``<prog>: <reason>; <then>``, and exit status 130."""
    try:
        with signals_as_interrupt():
            result = main()
            raise_if_stopped()  # a stop that a library swallowed on the way out
        return result
    except KeyboardInterrupt as stop:
        print(f"{prog}: {stop or 'interrupted'}; {then}", file=sys.stderr)
        raise SystemExit(130) from None
