"""Ctrl-C and SIGTERM as one recorded stop of the command.

The handler raises :class:`KeyboardInterrupt` where the main thread is, and
also records the stop, because an exception raised at an arbitrary point does
not always arrive as itself:

- inside OmegaConf, a KeyboardInterrupt leaves a half-set node behind, and the
  next step fails with an ``AttributeError`` (Hydra composes a sweep's next job
  there, between two jobs, and would print it as a traceback); inside
  SQLAlchemy (MLflow's and Optuna's stores) it leaves a connection checked out
  in the middle of a transaction, whose lock on the SQLite file makes every
  later write of the process wait 20 s and fail, and closing it may raise an
  error of its own. While the main thread is in such a module the stop waits:
  a profile hook (``sys.setprofile``, on the main thread only, while a stop
  waits) raises it at the first call or return outside, so it arrives as if
  the library's call had raised it after finishing its work;
- Python drops an exception raised inside a ``__del__`` or a weakref callback
  (TensorFlow runs many between two batches): :func:`raise_if_stopped`, at the
  next batch, raises the recorded stop again;
- any other library may still turn it into an error of its own:
  :func:`surfaced` turns an error that follows a stop back into the stop.

A step that must not be cut in two (a search's trial created, then marked as
this process's) runs within :func:`held`: a stop that comes inside waits for
the block's end (a second one does not); :func:`whole` enters and leaves a
context manager (an MLflow run started, then ended) that way.

So a stopped command always ends with its "run the same command again" line,
never a traceback. A signal the process was started to ignore stays ignored.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Modules that an exception raised mid-update leaves inconsistent: a stop waits until the main thread is out.
FRAGILE_MODULES = ("omegaconf", "sqlalchemy")
# A generator's frame left or resumed is not a way out: raising there would run its cleanup half-way.
_GENERATORS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

_reason: str | None = None  # the stop asked of this process, once a signal came
_depth = 0  # nested signals_as_interrupt() blocks (a sweep, then its job's training)
_waiting = False  # a stop waits for the main thread to leave a fragile module (the profile hook is set)
_held = 0  # nested held() blocks: a stop waits for the outermost one's end


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _reason, _waiting
    if _waiting:  # a second signal while the stop waits: it still waits
        return
    repeated = _reason is not None
    _reason = "" if signum == signal.SIGINT else f"stopped by signal {signal.Signals(signum).name}"
    if _held and not repeated:  # raised when the held step ends; a second stop comes at once, as outside one
        return
    if _inside(frame, FRAGILE_MODULES):
        _waiting = True
        sys.setprofile(_raise_outside)
        return
    raise KeyboardInterrupt(_reason)


def _raise_outside(frame: FrameType, event: str, arg: object) -> None:
    """Profile hook while a stop waits: raise it at the first call made, or return to, outside a fragile module."""
    if event == "call":  # raised here, the call is not made: the caller sees it raise
        outside = frame.f_back
        if outside is None or _module(outside) in FRAGILE_MODULES or frame.f_code.co_name == "__del__":
            return
    elif event == "return" and _module(frame) in FRAGILE_MODULES:  # raised here, the caller sees the call raise
        outside = frame.f_back
    else:
        return
    if frame.f_code.co_flags & _GENERATORS or _inside(outside, FRAGILE_MODULES):
        return
    raise_if_stopped()


def _module(frame: FrameType) -> str:
    return frame.f_globals.get("__name__", "").partition(".")[0]


def _inside(frame: FrameType | None, modules: tuple[str, ...]) -> bool:
    while frame is not None:
        if _module(frame) in modules:
            return True
        frame = frame.f_back
    return False


def stop_reason() -> str | None:
    """None until a signal asked this command to stop; then its reason ('' for Ctrl-C)."""
    return _reason


def raise_if_stopped() -> None:
    if _reason is not None:
        _stop_waiting()
        raise KeyboardInterrupt(_reason)


def _stop_waiting() -> None:
    global _waiting
    if _waiting:
        _waiting = False
        sys.setprofile(None)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`KeyboardInterrupt` and are recorded.

    The outermost block starts with no stop recorded and forgets its stop when
    left; on leaving it, the handlers that were there before are put back.
    Outside the main thread it does nothing.
    """
    global _reason, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _reason = None
    previous = {signum: signal.signal(signum, _interrupt) for signum in SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if _depth == 0:  # the stop was the block's: nothing after it (a held() step, a library call) raises it again
            _stop_waiting()
            _reason = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A stop that comes within the block is raised when the block ends (a step that must finish once begun).

    A second stop while the first waits is not held back (a step that hangs, a user who insists). Outside the
    main thread, where no stop is raised, it does nothing."""
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if not _held:
        raise_if_stopped()


@contextlib.contextmanager
def whole(start: Callable[[], contextlib.AbstractContextManager]) -> Iterator[Any]:
    """``start()``'s context manager (a run started, then ended) entered and left whole: a stop that comes while it
    is made or entered waits, then leaves it as any error would; one that comes while it is left waits for its end."""
    with contextlib.ExitStack() as stack:
        with held():
            value = stack.enter_context(_left_whole(start()))
        yield value


@contextlib.contextmanager
def _left_whole(manager: contextlib.AbstractContextManager) -> Iterator[Any]:
    value = manager.__enter__()
    try:
        yield value
    except BaseException as error:
        with held():
            if not manager.__exit__(type(error), error, error.__traceback__):
                raise
    else:
        with held():
            manager.__exit__(None, None, None)


@contextlib.contextmanager
def surfaced() -> Iterator[None]:
    """An error raised after a stop was asked leaves the block as that stop (:class:`KeyboardInterrupt`)."""
    try:
        yield
    except Exception as error:
        if _reason is None:
            raise
        _stop_waiting()
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
        print(f"{prog}: {str(stop) or 'interrupted'}; {then}", file=sys.stderr)
        raise SystemExit(130) from None
