"""Credentials never written: the one place that finds passwords in URIs and hides them.

A URI may carry credentials in its authority, ``scheme://user:password@host/...``.
digitlab never writes or prints such a password: MLflow params, tags and
artifacts, JSON outputs, reports, log lines and error messages all go through
:func:`redact` (or :func:`redact_data` for a whole structure), which turns the
user information into ``***``: ``scheme://***@host/...``. A user name alone
(``postgresql://user@host/db``) is no secret and stays.

:func:`split_credentials` takes the credentials out of a URI, so that a client
can be given them another way (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# scheme://USERINFO@ : the user information is everything of the authority before its last "@"
# (a password may hold a raw "@"); the authority ends at "/", "?", "#", white space or a quote.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>`]*)@")


def _mask(match: re.Match) -> str:
    return f"{match['scheme']}{MASK}@" if ":" in match["userinfo"] else match[0]


def redact(text: str) -> str:
    """``text`` with the password of every URI in it hidden: ``scheme://***@host/...``."""
    return _USERINFO.sub(_mask, text) if "://" in text else text


def redact_data(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples and strings, nested) with every string redacted; other values as they are."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_data(key): redact_data(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_data(item) for item in obj)
    return obj


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URI with a password (``scheme://user:password@host``)."""
    return isinstance(text, str) and redact(text) != text


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without its user information, user name, password)``; the URI as it is when it holds no password."""
    if not has_password(uri):
        return uri, None, None
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), unquote(parts.username or ""), unquote(parts.password or "")


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record's message, arguments and traceback before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def install_record_redaction() -> None:
    """Redact every log record as it is made, once per process.

    The handler filter is lost when something reconfigures logging later (Hydra's
    job logging replaces the root handlers) and never sees loggers that don't
    propagate to the root (MLflow's own): redacting at the record's creation
    covers both.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "digitlab_redacts", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        RedactingFilter().filter(record)
        return record

    redacting.digitlab_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)
