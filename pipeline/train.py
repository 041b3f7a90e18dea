"""Train stage: ``python -m pipeline.train --params params.yaml model=cnn`` (DVC), or by hand /
as a sweep over conf/: ``python -m pipeline.train -m model=linear,mlp``.

Returns the best validation accuracy, the value Hydra's Optuna sweeper maximises.
"""

from omegaconf import DictConfig

from digitlab.config import stage_main
from digitlab.training import train


def run(cfg: DictConfig) -> float:
    return train(cfg).val_accuracy


main = stage_main(run)

if __name__ == "__main__":
    main()
