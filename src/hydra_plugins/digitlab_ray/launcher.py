"""The Hydra side of digitlab's Ray launcher: read ``hydra.launcher``, then hand over to :class:`digitlab.raylaunch.Launch`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf


class DigitlabRayLauncher(Launcher):
    @staticmethod
    def preflight(options: DictConfig) -> None:
        """Check ``hydra.launcher`` and that the cluster answers, before the sweep starts anything (exit 2 if not)."""
        from digitlab.raylaunch import RayOptions, wait_for_head

        settings = RayOptions(**_plain({key: value for key, value in options.items() if key != "_target_"}))
        settings.check()
        wait_for_head(settings)

    def __init__(self, **options: Any) -> None:
        self.options = _plain(options)
        self.launch_ = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from digitlab.config import fail
        from digitlab.errors import DigitlabError
        from digitlab.raylaunch import Launch, RayOptions

        try:
            options = RayOptions(**self.options)
            options.check()
        except (DigitlabError, TypeError) as error:
            fail(error if isinstance(error, DigitlabError) else DigitlabError(f"hydra.launcher: {error}"))
        self.launch_ = Launch(options, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from digitlab.config import fail
        from digitlab.errors import DigitlabError
        from digitlab.raylaunch import ClusterLost, abandon

        try:
            return self.launch_.run(job_overrides, initial_job_idx)
        except ClusterLost as error:
            abandon(f"digitlab: error: {error}")
        except DigitlabError as error:  # no cluster answers (ClusterUnreachable), ...
            fail(error)


def _plain(options) -> dict[str, Any]:
    """``hydra.launcher``'s values as plain Python (lists and dicts, not OmegaConf containers)."""
    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value for key, value in options.items()}
