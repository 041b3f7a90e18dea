"""The recipe a training run uses, checked as a whole before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from digitlab.errors import ConfigError, require_choice, require_non_negative, require_positive
from digitlab.models import validate_model, validate_optimizer

MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")


@dataclass(frozen=True)
class Recipe:
    """One entry of ``cfg.models``, validated, as plain dicts."""

    name: str
    model: dict[str, Any]
    optimizer: dict[str, Any]
    training: dict[str, Any]

    @property
    def monitor(self) -> str:
        return self.training["early_stopping"]["monitor"]

    @property
    def monitor_improves(self):
        """``better(new, old)`` for the monitored metric, respecting min_delta."""
        delta = float(self.training["early_stopping"]["min_delta"])
        if "loss" in self.monitor:
            return lambda new, old: new < old - delta
        return lambda new, old: new > old + delta

    def schedule(self, train_size: int) -> tuple[int, int, int]:
        """(steps per evaluation, number of evaluations, total optimizer steps).

        One evaluation every ``eval_every_epochs`` passes over the data, or every
        ``eval_every_steps`` when that is set; ``max_steps`` (when set) wins over ``epochs``.
        """
        training = self.training
        steps_per_pass = math.ceil(train_size / training["batch_size"])
        total_steps = training["max_steps"] or training["epochs"] * steps_per_pass
        steps_per_eval = training["eval_every_steps"] or training["eval_every_epochs"] * steps_per_pass
        return steps_per_eval, math.ceil(total_steps / steps_per_eval), total_steps


def recipe_from_config(cfg: DictConfig) -> Recipe:
    """The recipe ``cfg.model`` names, every setting checked, naming the setting when one is wrong."""
    models = cfg.get("models") or {}
    require_choice("model", cfg.get("model"), tuple(models))
    name = str(cfg.model)
    prefix = f"models.{name}"
    recipe = OmegaConf.to_container(models[name], resolve=True)
    for section in ("model", "optimizer", "training"):
        if not isinstance(recipe.get(section), dict):
            raise ConfigError(f"{prefix}.{section}", recipe.get(section), "a mapping of settings (see conf/)")
    require_non_negative("seed", cfg.get("seed"), integer=True)
    validate_model(recipe["model"], f"{prefix}.model")
    validate_optimizer(recipe["optimizer"], f"{prefix}.optimizer")
    _validate_training(recipe["training"], f"{prefix}.training")
    return Recipe(name, recipe["model"], recipe["optimizer"], recipe["training"])


def _validate_training(training: dict[str, Any], prefix: str) -> None:
    require_positive(f"{prefix}.epochs", training.get("epochs"), integer=True)
    require_positive(f"{prefix}.max_steps", training.get("max_steps"), integer=True, allow_none=True)
    require_positive(f"{prefix}.batch_size", training.get("batch_size"), integer=True)
    require_positive(f"{prefix}.shuffle_buffer", training.get("shuffle_buffer"), integer=True)
    require_positive(f"{prefix}.eval_every_steps", training.get("eval_every_steps"), integer=True, allow_none=True)
    require_positive(f"{prefix}.eval_every_epochs", training.get("eval_every_epochs"), integer=True)
    checkpoint = training.get("checkpoint") or {}
    require_positive(f"{prefix}.checkpoint.every_epochs", checkpoint.get("every_epochs"), integer=True)
    stopping = training.get("early_stopping")
    if not isinstance(stopping, dict):
        raise ConfigError(f"{prefix}.early_stopping", stopping, "a mapping with enabled, monitor, patience, min_delta")
    require_choice(f"{prefix}.early_stopping.monitor", stopping.get("monitor"), MONITORS)
    require_positive(f"{prefix}.early_stopping.patience", stopping.get("patience"), integer=True)
    require_non_negative(f"{prefix}.early_stopping.min_delta", stopping.get("min_delta"))
