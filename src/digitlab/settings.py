"""The whole configuration as one validated object, and where its outputs go.

:func:`load_settings` checks a composed configuration (``params.yaml``, or
``conf/`` composed by Hydra) against :class:`Settings` once, at the entry point
of every stage, ``digitlab params``, runs by hand and sweeps, before any
download, training or MLflow run. Below the entry point the typed, frozen
settings flow down and nothing re-checks them.

Each group's schema lives beside the code that uses it: a dataset source's in
:mod:`digitlab.data.sources`, a model family's in :mod:`digitlab.models`, the
optimizer's and the training schedule's in :mod:`digitlab.training`, the
tracking store's in :mod:`digitlab.tracking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from pydantic import Field, ValidationError, model_validator

from digitlab.data.sources import DatasetSettings
from digitlab.errors import ConfigError
from digitlab.models import ArchitectureSettings
from digitlab.schema import Name, NonNegativeInt, OpenFraction, PositiveInt, Seed, Strict, describe_error
from digitlab.tracking import TrackingSettings
from digitlab.training.augmentation import AugmentationSettings
from digitlab.training.optimizers import OptimizerSettings
from digitlab.training.schedule import TrainingSettings


class Recipe(Strict):
    """One trained model: an architecture, an optimizer and a training schedule."""

    model: ArchitectureSettings
    optimizer: OptimizerSettings
    training: TrainingSettings
    augmentation: AugmentationSettings = AugmentationSettings()


class PathSettings(Strict):
    data: str
    models: str
    reports: str
    cache: str | None = None
    checkpoints: str | None = None
    dataset_source: str


class EvaluateSettings(Strict):
    top_k: PositiveInt
    confidence_level: OpenFraction
    batch_size: PositiveInt
    roc_classes: NonNegativeInt


class ReportSettings(Strict):
    register_alias: Name | None = None
    registered_model_name: Annotated[str, Field(min_length=1, max_length=250)]


class SweepSettings(Strict):
    """How a sweep's jobs behave (``conf/config.yaml``: ``sweep``)."""

    # A sweep run again after an interruption skips the jobs whose MLflow runs under
    # the same sweep parent FINISHED with the same settings (digitlab.sweep).
    skip_finished: bool = True
    # The Optuna trial a job of `hydra/sweeper=digitlab_optuna` runs (set by the sweeper).
    trial: NonNegativeInt | None = None


class Settings(Strict):
    """Everything a digitlab run is told (``params.yaml``)."""

    dataset: DatasetSettings
    models: Annotated[dict[Name, Recipe], Field(min_length=1)]
    seed: Seed
    model: str
    tracking: TrackingSettings
    paths: PathSettings
    evaluate: EvaluateSettings
    report: ReportSettings
    sweep: SweepSettings = SweepSettings()
    output_dir: str | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Settings:
        if self.model not in self.models:
            raise ConfigError("model", self.model, "one of the recipes under models: " + ", ".join(self.models))
        self.dataset.check()
        self.dataset.check_outside_outputs(self.paths.data, self.paths.models, self.paths.reports)
        for name, recipe in self.models.items():
            recipe.training.check(f"models.{name}.training")
        return self

    @property
    def recipe(self) -> Recipe:
        """The recipe ``model`` names (what a train or evaluate stage works on)."""
        return self.models[self.model]


def load_settings(cfg: DictConfig | dict[str, Any]) -> Settings:
    """Validate a composed configuration; a bad value raises one :class:`ConfigError` line."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except OmegaConfBaseException as exc:
        raise ConfigError(getattr(exc, "full_key", None) or "settings", "an interpolation", "a value that resolves", str(exc).splitlines()[0]) from None
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise describe_error(error, data) from None


@dataclass(frozen=True)
class Layout:
    """Where a project's stage outputs are, resolved against its root."""

    root: Path
    data: Path
    raw: Path  # the download stage's output: <paths.data>/raw/<dataset name>
    models: Path
    reports: Path
    checkpoints: Path

    @classmethod
    def for_settings(cls, settings: Settings, root: Path | None = None) -> Layout:
        from digitlab.config import home_root, project_root

        root = root or project_root()
        paths = settings.paths
        checkpoints = root / paths.checkpoints if paths.checkpoints else home_root(root) / ".digitlab" / "checkpoints"
        from digitlab.data.raw import raw_dir_of

        raw = raw_dir_of(root / paths.data, settings.dataset.name)
        return cls(root, root / paths.data, raw, root / paths.models, root / paths.reports, checkpoints)

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    def model_dir(self, recipe: str) -> Path:
        return self.models / recipe

    @property
    def evaluations(self) -> Path:
        return self.reports / "evaluation"

    def report_dir(self, recipe: str) -> Path:
        """Where the evaluate stage puts one recipe's results."""
        return self.evaluations / recipe
