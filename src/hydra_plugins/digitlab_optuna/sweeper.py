"""The Hydra side of digitlab's Optuna search: read ``hydra.sweeper``, then hand over to :class:`digitlab.search.Search`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf


class DigitlabOptunaSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        self.options = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                        for key, value in options.items()}  # fmt: skip
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from digitlab import interrupts, tracking
        from digitlab.config import fail
        from digitlab.errors import DigitlabError
        from digitlab.search import Search, SearchOptions, default_storage, parse_space
        from digitlab.settings import load_settings

        try:
            options = SearchOptions(**self.options)
            options.check()
            space = parse_space(options.params, arguments)
            settings = load_settings(OmegaConf.masked_copy(self.config, [key for key in self.config if key != "hydra"]))
            storage = options.storage or default_storage(tracking.client_uri(tracking.resolve_uri(settings.tracking)))
            search = Search(options, storage, space, self.launcher, Path(self.config.hydra.sweep.dir))
        except (DigitlabError, TypeError) as error:
            fail(error if isinstance(error, DigitlabError) else DigitlabError(f"hydra.sweeper: {error}"))
        with interrupts.surfaced():  # Ctrl-C while Hydra composed a trial's configuration: a clean stop
            search.run()
