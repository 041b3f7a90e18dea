"""Compare every model of the pipeline run: ``python -m pipeline.report --params params.yaml``."""

from digitlab.config import stage_main
from digitlab.report.build import run

main = stage_main(run)

if __name__ == "__main__":
    main()
