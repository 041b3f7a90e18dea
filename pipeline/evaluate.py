"""Evaluate one trained model on the test split: ``python -m pipeline.evaluate --params params.yaml model=cnn``."""

from digitlab.config import stage_main
from digitlab.evaluation.evaluate import run

main = stage_main(run)

if __name__ == "__main__":
    main()
