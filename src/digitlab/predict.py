"""``digitlab predict``: classify your own images with a trained model.

``--model`` picks the model: a pipeline recipe (``linear``, ``mlp``, ``cnn``:
``<paths.models>/<name>/model.keras``), a ``.keras`` file, or an MLflow URI
(``models:/NAME@ALIAS`` or ``models:/NAME/ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``).
Any image Pillow reads (PNG, JPEG, ...) is converted to the model's input:
grey or RGB as the model expects, resized to its height and width. For a model
of an MNIST-like digit set (``--normalize auto``, or ``mnist``) the digit is
first normalised the way MNIST's were made: its ink cropped (Otsu's threshold
over the paper's local level), scaled to fit 20x20 keeping its aspect ratio and
pasted into 28x28 with its centre of mass in the middle. Class
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
NORMALIZE_CHOICES = ("auto", "mnist", "none")
# Datasets made the MNIST way (28x28 grey digits, cropped, scaled and centred): mnist, mnist_5k, mnist_1k, ...
# Not fashion_mnist (clothes), digits (scikit-learn's 8x8, made otherwise), cifar or a folder of your own.
MNIST_LIKE = re.compile(r"mnist(_\d+k?)?")
MNIST_SIDE, MNIST_BOX = 28, 20  # the field and the box the digit's ink is scaled to fit
ANALYSIS_SIDE = 512  # images are looked at (ink found) at most this large: plenty for a 20x20 result


@dataclass(frozen=True)
class Prediction:
    image: Path
    top: list[tuple[str, float]]  # (class name, probability), most probable first
    inverted: bool
    normalized: bool = False  # cropped, scaled and centred as MNIST's digits (``--normalize``)

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


# --- MNIST's recipe: ink cropped, scaled to fit 20x20 (aspect kept), centred by its mass in 28x28 ---


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values``: the cut of their 256-bin histogram with the largest between-class variance."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        return high
    counts, edges = np.histogram(values, bins=256, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)  # pixels at or below each cut
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(between[:-1]))])


def ink_strength(grey: np.ndarray, dark_ink: bool) -> np.ndarray:
    """How much ink each pixel holds, 0 (paper) to 255: light ink on dark, uneven lighting flattened.

    The paper's level is estimated locally: a grey closing (dark ink) or opening
    (light ink) over a window of a third of the image's shorter side (wider than
    any stroke, so strokes are not taken for paper), smoothed. Dark ink is the
    share of the paper's light it takes away (shadows scale paper and ink
    alike); light ink what stands above the background.
    """
    from scipy import ndimage

    pixels = grey.astype(np.float64)
    window = max(3, min(pixels.shape) // 3)
    if dark_ink:
        paper = ndimage.uniform_filter(ndimage.grey_closing(pixels, size=(window, window)), window)
        return np.clip(1.0 - pixels / np.maximum(paper, 1.0), 0.0, 1.0) * 255.0
    background = ndimage.uniform_filter(ndimage.grey_opening(pixels, size=(window, window)), window)
    return np.clip(pixels - background, 0.0, 255.0)


def ink_levels(strength: np.ndarray) -> np.ndarray:
    """Ink 0-1: the strokes found by Otsu's threshold, contrast stretched, paper noise and specks black.

    The strokes are the pixels of the (lightly smoothed) strength over Otsu's
    threshold, less specks (parts under 5% of the largest); their soft edges,
    down to half the threshold, stay with them. Their 80th percentile is full ink.
    """
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(strength, min(strength.shape) / 256)  # ~2 pixels at 512, none at 28
    threshold = otsu_threshold(smooth)
    if threshold <= 0:
        return np.zeros_like(strength)
    strokes, count = ndimage.label(smooth > threshold, structure=np.ones((3, 3)))
    areas = np.bincount(strokes.ravel())[1:]
    kept = 1 + np.flatnonzero(areas >= 0.05 * areas.max(initial=0))
    edges, _ = ndimage.label(smooth > threshold / 2, structure=np.ones((3, 3)))
    mask = np.isin(edges, np.unique(edges[np.isin(strokes, kept)]))
    floor, full = threshold / 2, float(np.percentile(strength[np.isin(strokes, kept)], 80)) if count else 0.0
    return np.where(mask & (edges > 0), np.clip((strength - floor) / max(full - floor, 1e-6), 0.0, 1.0), 0.0)


def _resized(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float pixels resized, anti-aliased: area averages when shrinking (no ringing), bilinear when enlarging."""
    from PIL import Image

    shrink = height * width < pixels.shape[0] * pixels.shape[1]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize((width, height), resample), dtype=np.float32)


def _fit_box(ink: np.ndarray, box: int) -> np.ndarray:
    """``ink`` (0-1) scaled, aspect ratio kept and anti-aliased, so that its longer side is ``box`` pixels."""
    height, width = ink.shape
    scale = box / max(height, width)
    return np.clip(_resized(ink, max(1, round(height * scale)), max(1, round(width * scale))), 0.0, 1.0)


def _paste_centred(fitted: np.ndarray, side: int) -> np.ndarray:
    """``fitted`` in a ``side`` x ``side`` black field, its centre of mass moved to the field's centre.

    The shift is whole pixels and keeps the box inside the field (a box never
    gets cut), so a lopsided digit may sit up to a pixel or two off.
    """
    from scipy import ndimage

    field = np.zeros((side, side), np.float32)
    height, width = fitted.shape
    centre_y, centre_x = ndimage.center_of_mass(fitted)
    top = int(np.clip(round((side - 1) / 2 - centre_y), 0, side - height))
    left = int(np.clip(round((side - 1) / 2 - centre_x), 0, side - width))
    field[top : top + height, left : left + width] = fitted
    return field


def normalize_mnist(image, dark_ink: bool | None = None) -> np.ndarray:
    """A digit picture as MNIST's were made: (28, 28) float32, light ink 0-255 on black.

    ``dark_ink``: the ink is darker than the paper (None: so when the picture's
    border is light). The ink's bounding box is cropped, contrast stretched (its
    strokes full white, paper noise below half Otsu's threshold black), scaled to
    fit 20x20 keeping its aspect ratio and centred by its centre of mass in 28x28.
    A picture without ink gives a black field.
    """
    scale = ANALYSIS_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale))) if scale < 1 else image.size
    grey = convert_image(image, (size[1], size[0], 1))[..., 0].astype(np.float64)
    if dark_ink is None:
        dark_ink = _border_mean(grey) > 128
    strength = ink_strength(grey, dark_ink)
    ink = ink_levels(strength)
    if not ink.any():
        return np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _paste_centred(_fit_box(ink, MNIST_BOX), MNIST_SIDE) * 255.0


def normalized_input(image, shape: tuple[int, int, int], dark_ink: bool | None, light_background: bool = False) -> np.ndarray:
    """:func:`normalize_mnist` as the model's input (H, W, C) float32 0-255: scaled to its size, grey or RGB.

    ``light_background``: the model was trained on dark ink on light paper, so the result is inverted.
    """
    height, width, channels = shape
    digit = normalize_mnist(image, dark_ink)
    if (height, width) != digit.shape:
        digit = np.clip(_resized(digit, height, width), 0.0, 255.0)
    if light_background:
        digit = 255.0 - digit
    return np.repeat(digit[..., None], channels, axis=-1)


def choose_normalize(normalize: str, prepared_dir: Path, shape: tuple[int, ...]) -> str:
    """``--normalize``'s value, auto resolved: mnist when the project's data are an MNIST-like digit set of the model's shape."""
    from digitlab.data.prepared import load_meta

    if normalize != "auto":
        return normalize
    if not (prepared_dir / "meta.json").is_file():
        return "none"
    meta = load_meta(prepared_dir)
    digits = meta.class_names == [str(i) for i in range(10)]
    same_shape = tuple(meta.image_shape) == tuple(shape) == (MNIST_SIDE, MNIST_SIDE, 1)
    return "mnist" if MNIST_LIKE.fullmatch(meta.dataset) and digits and same_shape else "none"


def model_inputs(pictures: list, shape: tuple[int, int, int], invert: str, normalize: str, trained_dark: bool | None) -> tuple[np.ndarray, list[bool]]:
    """The pictures as one batch of model inputs, and which of them were inverted.

    ``normalize`` none: resized whole, inverted (``invert`` auto) when the picture's
    border is light and the training images' dark. mnist: :func:`normalized_input`,
    the ink taken dark on a light border (``invert`` auto), or always (yes) or never (no).
    """
    inputs, inverted = [], []
    for picture in pictures:
        if normalize == "mnist":
            dark_ink = {"yes": True, "no": False}.get(invert)
            if dark_ink is None:  # judged as without --normalize: by the border of the picture at the model's size
                dark_ink = _border_mean(to_model_input(picture, (shape[0], shape[1], 1))) > 128
            inputs.append(normalized_input(picture, shape, dark_ink, light_background=trained_dark is False))
            inverted.append(dark_ink != (trained_dark is False))  # the result is light on dark unless trained the other way
            continue
        pixels = to_model_input(picture, shape)
        flip = invert == "yes" or (trained_dark is True and _border_mean(pixels) > 128)
        inputs.append(255.0 - pixels if flip else pixels)
        inverted.append(flip)
    return np.stack(inputs), inverted


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
    from mlflow.models import Model

    from digitlab import tracking
    from digitlab.models import load_model as load_keras_model

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the answer is the predictions, no bars
    store = tracking.configure(settings)
    uri = registry_uri(uri)
    try:
        # Everything downloaded goes into this one folder, removed after: MLflow's own readers of a model's MLmodel
        # (mlflow.models.get_model_info) leave the copy they download in a temp folder of their own, one per call.
        with tempfile.TemporaryDirectory(prefix="digitlab-model-") as tmp:
            mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/MLmodel", dst_path=f"{tmp}/mlmodel")
            listing = [entry.path.rsplit("/", 1)[-1] for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri)]
            keras_file = keras_file_of(uri, Model.load(mlmodel).flavors, listing)
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


def predict(
    images: list[Path], model_spec: str = DEFAULT_MODEL, top_k: int = DEFAULT_TOP_K, invert: str = "auto", root: Path | None = None, normalize: str = "auto"
) -> list[Prediction]:
    """Classify ``images``; each with its ``top_k`` most probable classes."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DigitlabError(f"--top-k {top_k} is not valid: expected a whole number of at least 1")
    if invert not in ("auto", "yes", "no"):
        raise DigitlabError(f"--invert {invert} is not valid: expected auto, yes or no")
    if normalize not in NORMALIZE_CHOICES:
        raise DigitlabError(f"--normalize {normalize} is not valid: expected auto, mnist or none")
    # Cheap checks first: a typo in an image name fails before the model loads.
    pictures = [read_image(Path(path)) for path in images]
    project = project_settings(root or project_root())
    prepared_dir = project.prepared
    model = load_model(model_spec, project)
    shape = tuple(int(d) for d in model.input_shape[1:])
    if len(shape) != 3:
        raise DigitlabError(f"--model {model_spec} takes inputs of shape {shape}, expected images (height, width, channels)")
    normalize = choose_normalize(normalize, prepared_dir, shape)
    trained_dark = dark_background(prepared_dir) if invert == "auto" or normalize == "mnist" else None
    inputs, inverted = model_inputs(pictures, shape, invert, normalize, trained_dark)
    probabilities = np.asarray(model.predict(inputs, verbose=0), dtype=np.float64)
    names = class_names_for(probabilities.shape[1], prepared_dir) or [str(i) for i in range(probabilities.shape[1])]
    k = min(top_k, probabilities.shape[1])
    predictions = []
    for path, row, flip in zip(images, probabilities, inverted):
        order = np.argsort(-row, kind="stable")[:k]
        predictions.append(Prediction(Path(path), [(names[i], float(row[i])) for i in order], flip, normalize == "mnist"))
    return predictions


def _run(args: argparse.Namespace) -> None:
    for prediction in predict(args.images, args.model, args.top_k, args.invert, normalize=args.normalize):
        notes = ["colours inverted: light background"] if prediction.inverted else []
        notes += ["normalised as MNIST"] if prediction.normalized else []
        note = f" ({'; '.join(notes)})" if notes else ""
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
        help="invert the image's colours; auto: when the image has a light background but the training images a dark one (MNIST); "
        "with --normalize mnist, yes/no say whether the ink is dark (auto: when the image's border is light)",
    )
    parser.add_argument(
        "--normalize",
        default="auto",
        metavar="{auto,mnist,none}",
        help="mnist: crop the digit's ink, scale it to fit 20x20 (aspect kept) and centre it by its mass in 28x28, as MNIST's digits were made "
        "(then scaled to the model's input size); none: resize the whole image; auto (default): mnist when the project's prepared data "
        "are an MNIST-like digit set (mnist, mnist_5k, mnist_1k) of the model's input shape, else none",
    )
    parser.set_defaults(handler=_run)
