"""DVC stage `preprocess`: data/raw/<dataset> (or a folder read in place) -> data/prepared (uint8 train/val/test splits, meta.json, samples.png).

    python -m pipeline.preprocess --params params.yaml  # as DVC runs it
    python -m pipeline.preprocess dataset=digits        # by hand, composing conf/
"""

from digitlab.config import stage_main
from digitlab.data.preprocess import prepare_dataset
from digitlab.settings import Layout, Settings


def run(settings: Settings) -> None:
    layout = Layout.for_settings(settings)
    prepare_dataset(settings.dataset, raw_dir=layout.raw, prepared_dir=layout.prepared)


main = stage_main(run)

if __name__ == "__main__":
    main()
