"""DVC stage `download`: fetch or locate the configured dataset's raw files into data/raw.

    python -m pipeline.download --params params.yaml    # as DVC runs it
    python -m pipeline.download dataset=digits          # by hand, composing conf/
"""

from omegaconf import DictConfig

from digitlab.config import project_root, stage_main
from digitlab.data.download import cache_dir, download_dataset


def run(cfg: DictConfig) -> None:
    root = project_root()
    download_dataset(cfg.dataset, raw_dir=root / cfg.paths.data / "raw", cache=cache_dir(cfg.paths.get("cache"), root), root=root)


main = stage_main(run)

if __name__ == "__main__":
    main()
