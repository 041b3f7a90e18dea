"""The building blocks of digitlab's configuration schema (pydantic v2).

Every group of settings is a :class:`Strict` model: unknown keys are errors,
types are not coerced (``"yes"`` is not a boolean, ``"3"`` not a number), NaN
and infinities are refused, and a validated object is frozen. The whole
configuration is :class:`digitlab.settings.Settings`, checked once at every
entry point; :func:`describe_error` turns pydantic's report into the one line
a user reads: the setting, the value, and what is allowed.

Why pydantic and not OmegaConf structured configs: ``dvc exp run`` composes
``conf/`` in DVC's own process, where Python-registered structured-config
nodes do not exist, so ``conf/`` stays plain YAML and the schema is applied to
the composed result. Pydantic also checks ranges, patterns and cross-field
rules, which structured configs (types only) cannot.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitlab.errors import ConfigError


class Strict(BaseModel):
    """Base of every settings group."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # 0 <= x < 1 (dropout, momentum)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]  # 0 < x < 1 (confidence level, split fraction)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy and TensorFlow accept


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[list[str], Any, int | None]:
    """The user's dotted path for a pydantic error location, the value found there, and where in the location
    pydantic first named something the input does not have (a missing key, or a union member's type such as
    ``constrained-int``), if anywhere.

    Pydantic puts the tag of a tagged union (``cnn`` in ``models.cnn.model.cnn.dropout``)
    into the location; following the location through the input data drops it.
    """
    path: list[str] = []
    node = data
    unmatched: int | None = None
    lost = False  # past the first part the input does not have
    for at, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(f"[{part}]")
        elif not (isinstance(node, dict) and part in _union_tags(node)):
            if not lost:
                unmatched, lost = (at if isinstance(part, str) else None), True
            if isinstance(node, dict):  # a key the input lacks (a missing setting)
                path.append(str(part))
                node = None
    return path, node, unmatched


def _union_tags(node: dict) -> set[Any]:
    return {value for key, value in node.items() if key in ("name", "source") and isinstance(value, str)}


def _dotted(path: list[str]) -> str:
    return ".".join(path).replace(".[", "[")


def _allowed(error: dict[str, Any]) -> str:
    kind, message, ctx = error["type"], error["msg"], error.get("ctx") or {}
    if kind == "union_tag_invalid":
        return "one of " + str(ctx.get("expected_tags", "")).replace("'", "")
    if kind == "union_tag_not_found":
        return f"a mapping with a {ctx.get('discriminator', 'name')} key naming its kind"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return "a name of letters, digits, '_', '.' or '-', starting with a letter or digit"
        return f"text matching the pattern {ctx.get('pattern')}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"{'at least' if kind == 'too_short' else 'at most'} {bound} item{'s' if bound != 1 else ''}"
    if kind == "extra_forbidden":
        return "no such setting (a misspelt key, or one from another option of its group; see conf/)"
    if kind == "missing":
        return "a value (the setting is missing)"
    for prefix in ("Input should be ", "Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            break
    if kind.startswith(("greater", "less")):
        return f"a number {message}"
    if kind.startswith(("int_", "float_", "bool_", "string_", "list_", "dict_", "literal_", "too_", "finite")):
        return message
    return message[0].lower() + message[1:] if message else kind


def describe_error(error: ValidationError, data: Any, prefix: str = "") -> ConfigError:
    """The first problem of a validation as a :class:`ConfigError` (one line), naming how many more there are."""
    errors = error.errors(include_url=False)
    first = errors[0]
    _, _, at = _walk(data, tuple(first["loc"]))
    if at is not None and first["type"] != "missing":
        # A setting that may be one of several types (a count, or a list of counts): pydantic reports each type's
        # complaint. The one that tells is the type the value has (the one without a type error); the others'
        # complaints are not more problems.
        tried = [e for e in errors if tuple(e["loc"][:at]) == tuple(first["loc"][:at]) and len(e["loc"]) > at
                 and isinstance(e["loc"][at], str) and e["loc"][at] != first["loc"][at] and e["type"] != "missing"]  # fmt: skip
        members = [first, *tried]
        first = next((e for e in members if not e["type"].endswith("_type")), first)
        errors = [first, *(e for e in errors if e not in members)]
    path, value, _ = _walk(data, tuple(first["loc"]))
    setting = _dotted(([prefix] if prefix else []) + path) or prefix or "settings"
    if first["type"] == "union_tag_invalid":  # name the key that picks the kind, and its value
        setting, value = f"{setting}.{str(first['ctx']['discriminator']).strip(chr(39))}", first["ctx"]["tag"]
    elif first["type"] in ("model_type", "dict_type", "model_attributes_type") or isinstance(value, dict):
        value = first.get("input") if not isinstance(first.get("input"), dict) else "{...}"
    hint = f"({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one)" if len(errors) > 1 else ""
    return ConfigError(setting, value, _allowed(first), hint)
