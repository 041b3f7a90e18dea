"""``digitlab predict``: classify your own images with a trained model.

``--model`` picks the model: a pipeline recipe (``linear``, ``mlp``, ``cnn``:
``<paths.models>/<name>/model.keras``), a ``.keras`` file, or an MLflow URI
(``models:/NAME@ALIAS`` or ``models:/NAME/ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``).
Any image Pillow reads (PNG, JPEG, ...) is converted to the model's input:
grey or RGB as the model expects, resized to its height and width. Class
names come from the project's prepared data (``data/prepared/meta.json``)
when it matches the model, else the class indices are printed.

Loading runs no code from the model: a ``.keras`` file loads with Keras'
``safe_mode`` (a Lambda layer is refused), and an MLflow model loads only from
the native ``.keras`` file of its ``keras`` flavor, never through MLflow's
loaders (which import a model's ``code/`` and unpickle its custom objects). An
image too large to decode safely (Pillow's decompression-bomb limits) is refused.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from digitlab.config import PARAMS_FILE, project_root
from digitlab.data.images import convert_image, open_image
from digitlab.errors import DigitlabError
from digitlab.tracking import TrackingSettings

MLFLOW_SCHEMES = ("models:/", "runs:/")
DEFAULT_MODEL = "cnn"
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class Prediction:
    image: Path
    top: list[tuple[str, float]]  # (class name, probability), most probable first
    inverted: bool

    @property
    def label(self) -> str:
        return self.top[0][0]


@dataclass(frozen=True)
class Project:
    """What predict needs from the project it runs in: its recipes, where their models are, its store."""

    recipes: tuple[str, ...]
    models: Path
    prepared: Path
    tracking: TrackingSettings


def project_settings(root: Path) -> Project:
    """The project's validated params.yaml, or the default layout outside a project."""
    from digitlab.config import load_params
    from digitlab.settings import Layout, load_settings

    if not (root / PARAMS_FILE).is_file():
        return Project(("linear", "mlp", "cnn"), root / "models", root / "data" / "prepared", TrackingSettings())
    settings = load_settings(load_params(root / PARAMS_FILE))
    layout = Layout.for_settings(settings, root)
    return Project(tuple(settings.models), layout.models, layout.prepared, settings.tracking)


def read_image(path: Path):
    """Open and fully decode an image, failing with a message that names the file."""
    from PIL import Image

    if path.is_dir():
        raise DigitlabError(f"image {path} is a directory: expected a PNG or JPEG file (pass the files, e.g. {path}/*.png)")
    with warnings.catch_warnings():
        # Over Image.MAX_IMAGE_PIXELS Pillow only warns; decoding such an image could exhaust memory.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return open_image(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DigitlabError(
                f"image {path} is too large to decode safely ({_one_line(exc)}): expected a PNG or JPEG of at most "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels; scale it down first"
            ) from None


def to_model_input(image, shape: tuple[int, int, int], invert: bool = False) -> np.ndarray:
    """An image as the model's input: (H, W, C) float32 pixels 0-255, grey (C=1) or RGB (C=3), transparency on white."""
    pixels = convert_image(image, shape).astype(np.float32)
    return 255.0 - pixels if invert else pixels


def _border_mean(pixels: np.ndarray) -> float:
    return float(np.concatenate([pixels[0].ravel(), pixels[-1].ravel(), pixels[:, 0].ravel(), pixels[:, -1].ravel()]).mean())


def dark_background(prepared_dir: Path) -> bool | None:
    """Whether the training images are light drawings on a dark background (as MNIST); None if unknown."""
    path = prepared_dir / "test.npz"
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        images = arrays["x"][:200].astype(np.float32)
    return bool(np.mean([_border_mean(image) for image in images]) < 128)


def load_model(spec: str, project: Project):
    """The Keras model ``--model`` names (see the module docstring)."""
    if spec.startswith(MLFLOW_SCHEMES):
        return _load_mlflow_model(spec, project.tracking)
    if spec in project.recipes:
        path = project.models / spec / "model.keras"
        if not path.is_file():
            raise DigitlabError(f"{path} is missing: --model {spec} expects the pipeline's trained model (run dvc repro train@{spec})")
    else:
        path = Path(spec)
        if not path.exists():
            raise DigitlabError(f"--model {spec}: no such file; expected {_model_choices(project)}")
        if path.is_dir() or path.suffix != ".keras":
            raise DigitlabError(f"--model {spec} is not a .keras file; expected {_model_choices(project)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the answer
    from digitlab.models import load_model as load_keras_model

    return load_keras_model(path)


def _model_choices(project: Project) -> str:
    return f"a recipe ({', '.join(project.recipes)}), a .keras file, or an MLflow URI (models:/NAME@ALIAS or models:/NAME/ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model)"


def registry_uri(uri: str) -> str:
    """``models:/NAME/ALIAS`` -> ``models:/NAME@ALIAS``, MLflow's form; versions and other URIs stay as they are."""
    match = re.fullmatch(r"models:/([^/@]+)/([^/]+)", uri)
    if match and not match.group(2).isdigit():
        return f"models:/{match.group(1)}@{match.group(2)}"
    return uri


def _load_mlflow_model(uri: str, settings: TrackingSettings):
    """The Keras model of an MLflow model URI, loaded from its keras flavor's .keras file with safe_mode only."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from digitlab import tracking
    from digitlab.models import load_model as load_keras_model

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the answer is the predictions, no bars
    store = tracking.configure(settings)
    uri = registry_uri(uri)
    try:
        info = mlflow.models.get_model_info(uri)
        listing = [entry.path.rsplit("/", 1)[-1] for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri)]
        keras_file = keras_file_of(uri, info.flavors, listing)
        with tempfile.TemporaryDirectory(prefix="digitlab-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{keras_file}", dst_path=tmp)
            try:
                return load_keras_model(Path(local))
            except DigitlabError as exc:
                reason = _one_line(exc.__cause__ or exc)
                raise DigitlabError(f"refusing MLflow model {uri}: its Keras file does not load in Keras' safe_mode ({reason})") from None
    except (MlflowException, OSError) as exc:
        raise DigitlabError(f"cannot load MLflow model {uri} from the store {store}: {_one_line(exc)}") from exc


def keras_file_of(uri: str, flavors: dict, artifacts: list[str]) -> str:
    """The path, inside MLflow model ``uri``, of its keras flavor's native .keras file; refuses a model that ships code."""
    if "keras" not in flavors:
        raise DigitlabError(
            f"refusing MLflow model {uri}: it has no keras flavor (flavors: {', '.join(flavors) or 'none'}); "
            "digitlab loads only Keras models logged by mlflow.keras (digitlab's train stage)"
        )
    shipped = sorted(name for name in artifacts if name == "code" or name.startswith("custom_objects"))
    shipped += [f"{name} flavor's code" for name, conf in flavors.items() if isinstance(conf, dict) and conf.get("code")]
    if shipped:
        raise DigitlabError(f"refusing MLflow model {uri}: it ships Python code ({', '.join(sorted(set(shipped)))}) that loading would run")
    conf = flavors["keras"] or {}
    data = str(conf.get("data", "data")).strip("/")
    if conf.get("save_exported_model") or ".." in data.split("/") or not data:
        raise DigitlabError(f"refusing MLflow model {uri}: its keras flavor holds no native .keras file (an exported SavedModel)")
    return f"{data}/model.keras"


def _one_line(error: BaseException | str) -> str:
    """An error message on one line (Keras' and MLflow's span several)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 500 else text[:497] + "..."


def class_names_for(num_outputs: int, prepared_dir: Path) -> list[str] | None:
    """The prepared data's class names when they fit the model's outputs."""
    from digitlab.data.prepared import load_meta

    if not (prepared_dir / "meta.json").is_file():
        return None
    names = load_meta(prepared_dir).class_names
    return names if len(names) == num_outputs else None


def predict(images: list[Path], model_spec: str = DEFAULT_MODEL, top_k: int = DEFAULT_TOP_K, invert: str = "auto", root: Path | None = None) -> list[Prediction]:
    """Classify ``images``; each with its ``top_k`` most probable classes."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DigitlabError(f"--top-k {top_k} is not valid: expected a whole number of at least 1")
    if invert not in ("auto", "yes", "no"):
        raise DigitlabError(f"--invert {invert} is not valid: expected auto, yes or no")
    # Cheap checks first: a typo in an image name fails before the model loads.
    pictures = [read_image(Path(path)) for path in images]
    project = project_settings(root or project_root())
    prepared_dir = project.prepared
    model = load_model(model_spec, project)
    shape = tuple(int(d) for d in model.input_shape[1:])
    if len(shape) != 3:
        raise DigitlabError(f"--model {model_spec} takes inputs of shape {shape}, expected images (height, width, channels)")
    trained_dark = dark_background(prepared_dir) if invert == "auto" else None
    inputs, inverted = [], []
    for picture in pictures:
        pixels = to_model_input(picture, shape)
        flip = invert == "yes" or (trained_dark is True and _border_mean(pixels) > 128)
        inputs.append(255.0 - pixels if flip else pixels)
        inverted.append(flip)
    probabilities = np.asarray(model.predict(np.stack(inputs), verbose=0), dtype=np.float64)
    names = class_names_for(probabilities.shape[1], prepared_dir) or [str(i) for i in range(probabilities.shape[1])]
    k = min(top_k, probabilities.shape[1])
    predictions = []
    for path, row, flip in zip(images, probabilities, inverted):
        order = np.argsort(-row, kind="stable")[:k]
        predictions.append(Prediction(Path(path), [(names[i], float(row[i])) for i in order], flip))
    return predictions


def _run(args: argparse.Namespace) -> None:
    for prediction in predict(args.images, args.model, args.top_k, args.invert):
        note = " (colours inverted: light background)" if prediction.inverted else ""
        print(f"{prediction.image}: {prediction.label}{note}")
        for name, probability in prediction.top:
            print(f"  {name:>12}  {probability:7.2%}")
    sys.stdout.flush()


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify your own images (PNG, JPEG) with a trained model",
        description="Print the predicted class and the top-k probabilities of each image. "
        "Examples: digitlab predict digit.png; digitlab predict *.png --model models:/digitlab-mnist_5k@champion --top-k 5",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (any size; converted to the model's input)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a recipe of the project's params.yaml (linear, mlp, cnn, ...), a .keras file, or an MLflow URI (default: {DEFAULT_MODEL})")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"how many classes to list per image (default: {DEFAULT_TOP_K})")
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="invert the image's colours; auto: when the image has a light background but the training images a dark one (MNIST)",
    )
    parser.set_defaults(handler=_run)
