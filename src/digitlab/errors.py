"""Errors a user can act on: they are printed as one clear line, never as a traceback."""

from __future__ import annotations

from typing import Any


class DigitlabError(Exception):
    """A problem with the user's input or environment, explained in its message."""


class ConfigError(DigitlabError):
    """A setting has a value that is not allowed.

    The message names the setting, the value and what is allowed, e.g.
    ``models.cnn.model.dropout=1.5 is not valid: expected less than 1``.
    """

    def __init__(self, setting: str, value: Any, allowed: str, hint: str = "") -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        message = f"{setting}={value!r} is not valid: expected {allowed}"
        super().__init__(f"{message}. {hint}" if hint else message)


class TrackingUnavailable(DigitlabError):
    """The MLflow tracking server (or the database behind it) can't be reached now; what is logged can wait in a journal."""
