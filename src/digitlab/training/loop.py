"""The train stage: load the data, build or resume the model, fit it in a tracked run, write the outputs.

Outputs in ``output_dir`` (else ``<paths.models>/<recipe>``) are described in
:mod:`digitlab.training.outputs`; what lets an interrupted run resume, in
:mod:`digitlab.training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from digitlab import interrupts, lineage, tracking
from digitlab.data.prepared import load_meta
from digitlab.journal import deliver_leftovers
from digitlab.runs import close_stale_runs
from digitlab.settings import Layout, Settings
from digitlab.training.checkpoints import CheckpointDir, RunState, fingerprint
from digitlab.training.fit import Fit
from digitlab.training.lock import hold_output_dir, prepare_output_dir
from digitlab.training.outputs import TrainOutputs, TrainResult

log = logging.getLogger("digitlab.training")


def train(settings: Settings, layout: Layout | None = None, callbacks: Sequence = ()) -> TrainResult:
    """Train the recipe ``settings.model`` on the prepared data; resume it when it was interrupted.

    ``callbacks`` are extra Keras callbacks, run after digitlab's own. One
    training at a time per output folder (:mod:`digitlab.training.lock`).
    """
    layout = layout or Layout.for_settings(settings)
    meta = load_meta(layout.prepared)
    mlflow_uri = tracking.configure(settings.tracking)
    # Built before any output or MLflow run exists: a model that does not fit the input fails here.
    model = _seeded_model(settings, meta)
    from digitlab.training.callbacks import RaiseWhenInterrupted  # Keras: imported with the model, not before

    outputs = TrainOutputs(output_dir(settings, layout), settings.model)
    with hold_output_dir(outputs.directory, layout.checkpoints):
        prepare_output_dir(outputs.directory)
        checkpoints = checkpoint_dir(settings, layout, meta)
        state, model = _resume_or_start(settings, checkpoints, model)
        resumed_run = state.run_id if state.run_id and tracking.run_exists(state.run_id) else None
        deliver_leftovers(mlflow_uri)
        # Runs of this recipe that a kill left RUNNING; the one resumed is continued instead.
        stale_filter = f"tags.model = '{settings.model}'"
        close_stale_runs(settings.tracking, tracking.experiment_id(settings.tracking, meta.dataset), stale_filter, resumed_run)

        with interrupts.signals_as_interrupt(), tracking.tracked_run(settings.tracking, settings.model, meta.dataset, resumed_run) as run:
            state.run_id = run.run_id
            if resumed_run is None:
                tracking.log_settings(settings)
            fit = Fit(settings, meta, model, outputs, checkpoints, state)
            with lineage.recorded(settings.tracking, run.journal, meta, layout.prepared, resumed=resumed_run is not None):
                fit.run(layout.prepared, [RaiseWhenInterrupted(), *callbacks])  # source, datasets, and system metrics while it trains
            result = fit.finalise(run)
        result = with_model_uri(result, run.journal.model_uri)
        outputs.write_result(result)
        checkpoints.remove()  # complete: nothing to resume
    return result


def with_model_uri(result: TrainResult, model_uri: str | None) -> TrainResult:
    """The result with the URI of its logged MLflow model (None while the model waits in the journal)."""
    return dataclasses.replace(result, run=dataclasses.replace(result.run, model_uri=model_uri))


def output_dir(settings: Settings, layout: Layout) -> Path:
    return Path(settings.output_dir) if settings.output_dir else layout.model_dir(settings.model)


def _seeded_model(settings: Settings, meta):
    import keras
    import tensorflow as tf

    from digitlab.models import build_model
    from digitlab.training.augmentation import augmentation_layer

    keras.utils.set_random_seed(settings.seed)
    if settings.recipe.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    augment = augmentation_layer(settings.recipe.augmentation, meta.flip_keeps_label, settings.seed)
    return build_model(settings.recipe.model, meta.image_shape, meta.num_classes, f"models.{settings.model}.model", augment)


def checkpoint_dir(settings: Settings, layout: Layout, meta) -> CheckpointDir:
    """Where a run of this recipe, data and seed keeps what it resumes from (outside the stage's outputs)."""
    run_fingerprint = fingerprint(settings.recipe, meta.to_json(), settings.seed)
    return CheckpointDir(layout.checkpoints / f"{settings.model}-{run_fingerprint[:16]}", run_fingerprint)


def _resume_or_start(settings: Settings, checkpoints: CheckpointDir, model):
    """The state of an unfinished run of the same recipe, data and seed with its model; else a fresh start."""
    from digitlab.models import load_model

    state = checkpoints.resumable() if settings.recipe.training.resume else None  # only a complete unit
    if state is None:
        checkpoints.clear()
        return RunState(checkpoints.fingerprint), model
    log.info("resuming %s from %s: evaluation %d, step %d", settings.model, checkpoints.last, state.epoch, state.step)
    return state, load_model(checkpoints.last)
