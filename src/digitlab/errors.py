"""Errors a user can act on: they are printed as one clear line, never as a traceback."""

from __future__ import annotations

from typing import Any


class DigitlabError(Exception):
    """A problem with the user's input or environment, explained in its message."""


class ConfigError(DigitlabError):
    """A setting has a value that is not allowed.

    The message names the setting, the value and what is allowed, e.g.
    ``dataset.name='mnist_6k' is not valid: expected one of digits, mnist, ...``.
    """

    def __init__(self, setting: str, value: Any, allowed: str, hint: str = "") -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        message = f"{setting}={value!r} is not valid: expected {allowed}"
        super().__init__(f"{message}. {hint}" if hint else message)


def require_choice(setting: str, value: Any, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(setting, value, "one of " + ", ".join(sorted(choices)))


def require_positive(setting: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(setting, value, f"a {'whole ' if integer else ''}number greater than 0")


def require_non_negative(setting: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise ConfigError(setting, value, f"a {'whole ' if integer else ''}number of at least 0")
