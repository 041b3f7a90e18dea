"""DVC stage `download`: fetch or locate the configured dataset's raw files into data/raw/<dataset>.

    python -m pipeline.download --params params.yaml    # as DVC runs it
    python -m pipeline.download dataset=digits          # by hand, composing conf/
"""

from digitlab.config import stage_main
from digitlab.data.download import download_dataset
from digitlab.data.fetch import cache_dir
from digitlab.settings import Layout, Settings


def run(settings: Settings) -> None:
    layout = Layout.for_settings(settings)
    download_dataset(settings.dataset, raw_dir=layout.raw, cache=cache_dir(settings.paths.cache, layout.root), root=layout.root)


main = stage_main(run)

if __name__ == "__main__":
    main()
