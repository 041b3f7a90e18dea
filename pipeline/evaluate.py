"""Evaluate one trained recipe on the test split: ``python -m pipeline.evaluate --params params.yaml model=cnn``."""

from __future__ import annotations

from digitlab.config import stage_main
from digitlab.evaluation import evaluate
from digitlab.evaluation.outputs import EvaluationMetrics
from digitlab.settings import Layout, Settings


def run(settings: Settings) -> EvaluationMetrics:
    """Evaluate the recipe ``settings.model`` names."""
    return evaluate.run(settings, Layout.for_settings(settings), settings.model)


main = stage_main(run)

if __name__ == "__main__":
    main()
