"""The pipeline's stages, as DVC runs them: ``python -m pipeline.<stage> --params params.yaml``.

DVC runs the ``python`` first on PATH. Outside the project's environment that is a Python without
digitlab, and every stage ended in a traceback ending in ``ModuleNotFoundError``: it says so in one
line instead, naming that Python and what to do, with exit status 2 (standard library only here).
"""

import importlib.util
import sys

if importlib.util.find_spec("digitlab") is None:
    sys.stderr.write(
        f"digitlab: error: python={sys.executable} has no digitlab installed: run the pipeline in the project's "
        "environment (source .venv/bin/activate, or make repro; make setup creates it)\n"
    )
    raise SystemExit(2)
