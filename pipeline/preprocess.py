"""DVC stage `preprocess`: data/raw -> data/prepared (uint8 train/val/test splits, meta.json, samples.png).

    python -m pipeline.preprocess --params params.yaml  # as DVC runs it
    python -m pipeline.preprocess dataset=digits        # by hand, composing conf/
"""

from omegaconf import DictConfig

from digitlab.config import project_root, stage_main
from digitlab.data.preprocess import prepare_dataset


def run(cfg: DictConfig) -> None:
    data = project_root() / cfg.paths.data
    prepare_dataset(cfg.dataset, raw_dir=data / "raw", prepared_dir=data / "prepared")


main = stage_main(run)

if __name__ == "__main__":
    main()
