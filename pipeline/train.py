"""Train stage: ``python -m pipeline.train --params params.yaml model=cnn`` (DVC), or by hand /
as a sweep over conf/: ``python -m pipeline.train -m model=linear,mlp``.

Returns the best validation accuracy, the value Hydra's Optuna sweeper maximises.
"""

from digitlab.config import stage_main
from digitlab.settings import Settings
from digitlab.training.loop import train


def run(settings: Settings) -> float:
    return train(settings).metrics.val_accuracy


main = stage_main(run)

if __name__ == "__main__":
    main()
