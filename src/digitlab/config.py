"""How conf/, params.yaml and DVC relate.

- ``conf/`` is the single source of every value: Hydra config groups for
  dataset, model, optimizer, training, tracking, experiment presets and
  searches, composed by ``conf/config.yaml``.
- ``params.yaml`` is that composition written out and resolved. DVC tracks it
  and the pipeline stages read it, nothing else. ``dvc exp run`` rewrites it
  from ``conf/`` plus its ``-S`` overrides on every run (``hydra.enabled`` in
  ``.dvc/config``); ``digitlab params [OVERRIDES]`` (``make params``) rewrites
  it by hand before a plain ``dvc repro``.
- A stage run by DVC is ``python -m pipeline.STAGE --params params.yaml
  [key=value ...]``; the same entry point without ``--params`` is a Hydra app
  over ``conf/`` (runs by hand and ``-m`` sweeps). Both hand the stage the same
  shape of config, so there is one code path.

Because stages never read ``conf/``, an override given to ``dvc exp run -S``
can't be shadowed by a file DVC doesn't know about, and DVC reruns exactly the
stages whose declared params changed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from digitlab import interrupts
from digitlab.errors import DigitlabError
from digitlab.io import atomic_write_text

if TYPE_CHECKING:
    from digitlab.settings import Settings

log = logging.getLogger(__name__)

CONFIG_NAME = "config"
PARAMS_FILE = "params.yaml"
ROOT_MARKER = "dvc.yaml"
_EXPS_TMP = (".dvc", "tmp", "exps")


def project_root(start: Path | str | None = None) -> Path:
    """The project a command works in: the nearest ancestor of ``start`` (default: the
    working directory) that holds ``dvc.yaml``, else ``start``.

    Not ``$DVC_ROOT``: for ``dvc exp run --temp`` and ``--queue`` DVC points it at the
    parent repository while the stage runs in a copy under ``.dvc/tmp/exps/``, and the
    stage's outputs must land in that copy (DVC collects them from there).
    """
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ROOT_MARKER).is_file():
            return candidate
    return here


def home_root(start: Path | str | None = None) -> Path:
    """The project where shared state lives (the MLflow store), also from an experiment's copy.

    ``$DVC_ROOT`` when DVC runs the stage (the parent repository, also for
    ``--temp``/``--queue`` copies); otherwise the project root, with a copy
    under ``<project>/.dvc/tmp/exps/`` mapped back to ``<project>``.
    """
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    root = project_root(start)
    parts = root.parts
    for i in range(len(parts) - len(_EXPS_TMP), 0, -1):
        if parts[i : i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return root


def conf_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "conf"


def compose(overrides: Sequence[str] = (), root: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, as ``dvc exp run`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    directory = conf_dir(root)
    if not (directory / f"{CONFIG_NAME}.yaml").is_file():
        raise DigitlabError(f"no Hydra config at {directory / (CONFIG_NAME + '.yaml')}: run this inside a digitlab project")
    try:
        with initialize_config_dir(str(directory), version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except HydraException as exc:
        raise DigitlabError(f"cannot compose conf/ with overrides {list(overrides)}: {exc}") from exc
    OmegaConf.resolve(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply Hydra-grammar value overrides (``a.b=1``, ``+new=2``, ``~key``) to a loaded config.

    Unknown keys are an error (as in Hydra), so a mistyped override is never
    silently ignored.
    """
    if not overrides:
        return cfg
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        OmegaConf.set_struct(cfg, True)
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    except HydraException as exc:
        raise DigitlabError(f"invalid override in {list(overrides)}: {exc}") from exc
    finally:
        OmegaConf.set_struct(cfg, False)
    return cfg


def load_params(path: Path | str = PARAMS_FILE, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a composed config (params.yaml) and apply value overrides."""
    path = Path(path)
    if not path.is_file():
        raise DigitlabError(f"params file {path} does not exist: write it with `digitlab params` (make params)")
    import yaml

    try:
        cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DigitlabError(f"cannot read params file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise DigitlabError(f"params file {path} is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise DigitlabError(f"params file {path} does not hold a mapping of settings")
    return apply_overrides(cfg, overrides)


def write_params(overrides: Sequence[str] = (), path: Path | str | None = None, root: Path | None = None) -> Settings:
    """Compose ``conf/`` with ``overrides``, validate it, and write it to params.yaml, as ``dvc exp run`` would.

    A password in any URI (tracking.uri, dataset.url, tracking.ui_url, ...) is refused:
    params.yaml is committed with the project, so credentials go in the environment.
    """
    from digitlab.settings import load_settings

    root = root or project_root()
    cfg = compose(overrides, root)
    settings = load_settings(cfg)
    refuse_passwords(cfg)
    atomic_write_text(path or root / PARAMS_FILE, OmegaConf.to_yaml(cfg))
    return settings


def refuse_passwords(cfg: DictConfig) -> None:
    """Raise a :class:`DigitlabError` naming the first setting whose URI holds a password, and where credentials go."""
    from digitlab.redact import has_password, redact

    for key, value in to_flat_dict(cfg).items():
        if not isinstance(value, str) or not has_password(value):
            continue
        if key.startswith("tracking."):
            where = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment"
        else:
            where = "put them in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3, MLFLOW_TRACKING_USERNAME/PASSWORD for MLflow)"
        raise DigitlabError(
            f"{key}={redact(value)} holds a password, which params.yaml (committed with the project) must never hold: "
            f"give the URI without credentials and {where}"
        )


def to_flat_dict(cfg: DictConfig | dict, sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (for MLflow params)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{sep}{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(container, "")
    return flat


def setup_logging(level: int = logging.INFO) -> None:
    # TensorFlow's C++ start-up notices (CPU instructions, oneDNN) say nothing a user can act on;
    # warnings and errors still show. Must be set before TensorFlow is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_import()
    from digitlab.redact import install_log_filter, install_record_redaction

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    install_log_filter()  # no password in a URI reaches a log line
    install_record_redaction()  # nor one through handlers set up later (Hydra's) or MLflow's own
    for noisy in ("alembic", "mlflow.store", "git", "urllib3", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# What TensorFlow (2.19 and later) writes to stderr as it is imported whatever TF_CPP_MIN_LOG_LEVEL says
# (tensorflow/tensorflow#100442): notices, not warnings. Other lines written meanwhile are kept.
TENSORFLOW_IMPORT_NOTICES = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


@contextlib.contextmanager
def _stderr_without(notices: Sequence[str]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes too) while the block runs, then write back every line but ``notices``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(notice in line for notice in notices))
            if kept:
                os.write(2, kept.encode())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Import ``tensorflow`` (when something first does) with :data:`TENSORFLOW_IMPORT_NOTICES` left out of stderr."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and find the real module below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module

            def exec_module(module) -> None:
                with _stderr_without(TENSORFLOW_IMPORT_NOTICES):
                    execute(module)

            spec.loader.exec_module = exec_module
        return spec


def quiet_tensorflow_import() -> None:
    """Leave TensorFlow's import notices out of this process's stderr (a one-line error stays one line)."""
    if "tensorflow" not in sys.modules and not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def fail(error: BaseException) -> None:
    """Print a user-facing error as one line, any password in it redacted, and exit non-zero (2)."""
    from digitlab.redact import redact

    print(redact(f"digitlab: error: {error}"), file=sys.stderr)
    raise SystemExit(2)


def stage_main(func: Callable[[Settings], Any]) -> Callable[[], Any]:
    """Make ``func(settings)`` a command-line entry point with two config sources.

    ``python -m pipeline.X --params params.yaml [key=value ...]`` reads the
    params file DVC tracks (how ``dvc.yaml`` runs every stage);
    ``python -m pipeline.X [hydra overrides] [-m]`` composes ``conf/`` (runs
    by hand, sweeps). In Hydra mode an ``output_dir`` given is kept; otherwise a
    run by hand writes to :func:`stable_run_dir` (the same command again finds
    and resumes its own folder) and a sweep's job to Hydra's job directory; with
    ``--params`` it is left as configured. Either way the whole configuration is
    validated before ``func`` runs, and a :class:`DigitlabError` is printed as
    one line with exit status 2.
    """

    def run(cfg: DictConfig) -> Any:
        from digitlab.settings import load_settings

        interrupts.raise_if_stopped()  # a stop that came while Hydra composed this job
        try:
            with interrupts.surfaced():  # a sweep's next job must not run after a stop its job failed on
                return func(load_settings(cfg))
        except DigitlabError as error:
            fail(error)

    @functools.wraps(func)
    def main() -> Any:
        # Ctrl-C or SIGTERM: what was saved is said above.
        return interrupts.run_command(entry, "digitlab", "run the same command again to continue")

    def entry() -> Any:
        setup_logging()
        argv = sys.argv[1:]
        if argv[:1] == ["--params"]:
            if len(argv) < 2:
                fail(DigitlabError("--params needs a file, e.g. --params params.yaml"))
            try:
                cfg = load_params(argv[1], argv[2:])
            except DigitlabError as error:
                fail(error)
            return run(cfg)
        return _hydra_main(run)

    return main


RUN_DIR_RESOLVER = "digitlab_run_dir"


def stable_run_dir(cfg: DictConfig) -> str:
    """Where a run by hand of ``cfg`` writes: ``output_dir`` when given, else ``runs/<recipe>-<12 hex>``.

    The hex digits are a fingerprint of the validated settings (all but
    ``output_dir``), so running the same command again lands in the same folder
    and resumes there, and any other setting gets a folder of its own.
    """
    from digitlab.settings import load_settings

    if cfg.get("output_dir"):
        return str(cfg.output_dir)
    settings = load_settings(cfg)
    return str(project_root() / "runs" / f"{settings.model}-{settings_fingerprint(settings)[:12]}")


def settings_fingerprint(settings) -> str:
    """sha256 of the validated settings that decide what a training does (all but ``output_dir`` and ``sweep``)."""
    import hashlib
    import json

    payload = json.dumps(settings.model_dump(mode="json", exclude={"output_dir", "sweep"}), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _run_dir_resolver(*, _root_: DictConfig) -> str:
    """``${digitlab_run_dir:}`` (``hydra.run.dir``): Hydra's logs go to the run's own folder."""
    import time

    settings_only = OmegaConf.masked_copy(_root_, [key for key in _root_ if key != "hydra"])
    try:
        return stable_run_dir(settings_only)
    except DigitlabError:  # stage_main's validation reports it, in one line
        return str(project_root() / "runs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_invalid")


def _hydra_main(run: Callable[[DictConfig], Any]) -> Any:
    """``run`` as a Hydra app over ``conf/``, with ``output_dir`` set as :func:`stage_main` says."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def hydra_task(cfg: DictConfig) -> Any:
        if not cfg.get("output_dir"):
            hydra_config = HydraConfig.get()
            try:
                folder = hydra_config.runtime.output_dir if hydra_config.mode == RunMode.MULTIRUN else stable_run_dir(cfg)
            except DigitlabError as error:
                fail(error)
            with open_dict(cfg):
                cfg.output_dir = folder
        return run(cfg)

    OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, _run_dir_resolver, replace=True)
    app = hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base="1.3")(hydra_task)
    return app()
