"""Train stage: ``python -m pipeline.train --params params.yaml model=cnn`` (DVC), or by hand /
as a sweep over conf/: ``python -m pipeline.train -m model=linear,mlp``.

Returns the best validation accuracy, the value an Optuna search maximises. A sweep's
job that already FINISHED under the same sweep returns its recorded value instead of
training again (``sweep.skip_finished``); an Optuna trial reports to its study after
every evaluation and stops when pruned (:mod:`digitlab.search`).
"""

from digitlab.config import stage_main
from digitlab.settings import Settings


def run(settings: Settings) -> float:
    from digitlab.search import trial_callbacks
    from digitlab.sweep import finished_job
    from digitlab.training.loop import train

    done = finished_job(settings)
    if done is not None:
        return done
    return train(settings, callbacks=trial_callbacks(settings)).metrics.val_accuracy


main = stage_main(run)

if __name__ == "__main__":
    main()
