"""``digitlab predict`` on typeset digits: the whole picture resized vs normalised as MNIST's digits were made.

Renders a benchmark set of digit pictures with Pillow in the machine's fonts
(DejaVu: sans, serif, mono, condensed, bold, oblique, light; several sizes and
stroke widths; off-centre on canvases of 120-320 px; dark ink on light paper
and light on dark; some uneven lighting, noise, blur and JPEG), first the
issue's ten (DejaVu Sans Bold, dark on a light 200x200 canvas, centred), writes
them to a temporary folder, and classifies them with a trained MNIST-like model
two ways, through the very functions ``digitlab predict`` uses
(:func:`digitlab.predict.model_inputs`): ``--normalize none`` (the old
behaviour) and ``--normalize mnist``. Prints the accuracy of each side by side
and their ratio, writes its section of ``benchmarks/RESULTS.md`` (between the
``<!-- predict-normalize -->`` markers; the rest of the file is
benchmarks/run.py's) and the README's picture ``docs/predict-normalize.png``.

    python -m benchmarks.predict_normalize                      # the project's models/cnn/model.keras
    python -m benchmarks.predict_normalize --model other.keras --root /path/to/project --count 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
SECTION_START, SECTION_END = "<!-- predict-normalize -->", "<!-- /predict-normalize -->"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = (
    "DejaVuSans-Bold", "DejaVuSans", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold",
    "DejaVuSansCondensed", "DejaVuSans-Oblique", "DejaVuSerif-Italic", "DejaVuSans-ExtraLight",
)  # fmt: skip
ISSUE_SET = 10  # the issue's ten: bold sans, dark on a light 200x200 canvas


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    font: str
    dark_ink: bool


def font_files(names: tuple[str, ...] = FONTS) -> list[Path]:
    """The benchmark's fonts present on this machine (``fc-list`` shows them), else any TrueType font found."""
    found = [FONT_DIR / f"{name}.ttf" for name in names if (FONT_DIR / f"{name}.ttf").is_file()]
    if not found:
        found = sorted(Path("/usr/share/fonts").rglob("*.ttf"))[: len(names)]
    if not found:
        raise SystemExit("no TrueType fonts under /usr/share/fonts: install fonts-dejavu-core")
    return found


def render(digit: int, font_path: Path, rng: np.random.Generator, issue: bool = False):
    """One typeset digit picture (a Pillow image) and whether its ink is dark."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = (200, 200) if issue else (int(rng.integers(120, 321)), int(rng.integers(120, 321)))
    stroke = 0 if issue else int(rng.choice([0, 0, 1, 2, 4]))
    glyph = (0.6 if issue else rng.uniform(0.25, 0.8)) * min(width, height)
    probe = ImageFont.truetype(str(font_path), 100)
    left, top, right, bottom = probe.getbbox(str(digit), stroke_width=stroke)
    font = ImageFont.truetype(str(font_path), max(8, int(100 * glyph / (bottom - top))))
    left, top, right, bottom = font.getbbox(str(digit), stroke_width=stroke)
    dark_ink = issue or rng.random() < 0.7
    paper, ink = (int(rng.integers(190, 256)), int(rng.integers(0, 90))) if dark_ink else (int(rng.integers(0, 60)), int(rng.integers(170, 256)))
    if issue:
        paper, ink = 245, 15
    slack_x, slack_y = max(width - (right - left), 1), max(height - (bottom - top), 1)
    x = slack_x // 2 if issue else int(rng.integers(0, slack_x))
    y = slack_y // 2 if issue else int(rng.integers(0, slack_y))
    image = Image.new("L", (width, height), paper)
    ImageDraw.Draw(image).text((x - left, y - top), str(digit), font=font, fill=ink, stroke_width=stroke, stroke_fill=ink)
    return (image if issue else spoil(image, rng)), dark_ink


def spoil(image, rng: np.random.Generator):
    """Some of: uneven lighting (a gradient), blur, noise (paper grain, sensor noise)."""
    from PIL import Image, ImageFilter

    if rng.random() < 0.35:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
    pixels = np.asarray(image, dtype=np.float64)
    if rng.random() < 0.4:  # lighting falling off across the picture
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
        ramp = np.cos(angle) * xx / pixels.shape[1] + np.sin(angle) * yy / pixels.shape[0]
        pixels = pixels * (1.0 - rng.uniform(0.2, 0.45) * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9))
    if rng.random() < 0.5:
        pixels = pixels + rng.normal(0, rng.uniform(4, 18), pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def make_set(folder: Path, count: int, seed: int) -> list[Sample]:
    """``count`` pictures in ``folder``: the issue's ten, then varied ones (digits in turn, fonts at random)."""
    rng = np.random.default_rng(seed)
    fonts = font_files()
    bold_sans = next((f for f in fonts if f.stem == "DejaVuSans-Bold"), fonts[0])
    samples = []
    for i in range(count):
        issue = i < ISSUE_SET
        font = bold_sans if issue else fonts[int(rng.integers(len(fonts)))]
        image, dark_ink = render(i % 10, font, rng, issue)
        suffix = ".jpg" if not issue and rng.random() < 0.2 else ".png"
        path = folder / f"{i:04d}-{i % 10}{suffix}"
        image.save(path, **({"quality": int(rng.integers(60, 95))} if suffix == ".jpg" else {}))
        samples.append(Sample(path, i % 10, "issue" if issue else font.stem, dark_ink))
    return samples


def classify(samples: list[Sample], model_spec: str, root: Path) -> dict[str, np.ndarray]:
    """Predicted classes, raw (``--normalize none``) and normalised (``mnist``), and the normalised inputs."""
    from digitlab.predict import dark_background, load_model, model_inputs, project_settings, read_image

    project = project_settings(root)
    model = load_model(model_spec, project)
    shape = tuple(int(d) for d in model.input_shape[1:])
    trained_dark = dark_background(project.prepared)
    pictures = [read_image(s.path) for s in samples]
    out = {"test_accuracy": test_accuracy(model, project.prepared, shape), "trained_on": trained_on(project.prepared)}
    for normalize in ("none", "mnist"):
        inputs, _ = model_inputs(pictures, shape, "auto", normalize, trained_dark)
        out[normalize] = np.argmax(model.predict(inputs, verbose=0, batch_size=256), axis=1)
        out[f"{normalize}_inputs"] = inputs
    return out


def trained_on(prepared: Path) -> str:
    """The project's dataset (its prepared meta.json's name), what the pipeline's models were trained on."""
    from digitlab.data.prepared import load_meta

    return load_meta(prepared).dataset if (prepared / "meta.json").is_file() else "unknown data"


def test_accuracy(model, prepared: Path, shape: tuple[int, ...]) -> float | None:
    """The model's accuracy on the project's prepared test split (its own kind of images), when they fit it."""
    path = prepared / "test.npz"
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        x, y = arrays["x"], arrays["y"]
    if tuple(x.shape[1:]) != tuple(shape):
        return None
    return float(np.mean(np.argmax(model.predict(x.astype(np.float32), verbose=0, batch_size=256), axis=1) == y))


def accuracies(samples: list[Sample], predicted: dict[str, np.ndarray]) -> list[tuple[str, int, float, float]]:
    """(group, n, raw accuracy, normalised accuracy): all, the issue's ten, dark ink, light ink, per font."""
    labels = np.array([s.label for s in samples])
    groups = {"all": np.ones(len(samples), bool), "the issue's ten (bold sans, 200x200, dark on light)": np.arange(len(samples)) < ISSUE_SET}
    groups["dark ink on light paper (varied)"] = np.array([s.dark_ink and s.font != "issue" for s in samples])
    groups["light ink on dark (varied)"] = np.array([not s.dark_ink for s in samples])
    for font in sorted({s.font for s in samples} - {"issue"}):
        groups[font] = np.array([s.font == font for s in samples])
    rows = []
    for name, chosen in groups.items():
        if chosen.any():
            right = {k: float(np.mean(predicted[k][chosen] == labels[chosen])) for k in ("none", "mnist")}
            rows.append((name, int(chosen.sum()), right["none"], right["mnist"]))
    return rows


def figure(samples: list[Sample], predicted: dict[str, np.ndarray], path: Path, picks: int = 8) -> Path:
    """A strip: the picture, the model's input without and with normalisation and the prediction of each, for a few."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = pick_examples(samples, predicted, picks)
    fig, axes = plt.subplots(3, len(chosen), figsize=(1.4 * len(chosen), 4.9))
    for column, i in enumerate(chosen):
        axes[0, column].imshow(Image.open(samples[i].path).convert("L"), cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(f"digit {samples[i].label}", fontsize=9)
        for row, side in ((1, "none"), (2, "mnist")):
            axes[row, column].imshow(predicted[f"{side}_inputs"][i][..., 0], cmap="gray", vmin=0, vmax=255)
            ok = predicted[side][i] == samples[i].label
            axes[row, column].set_title(f"predicted {predicted[side][i]}", fontsize=9, color="green" if ok else "red")
        for row in range(3):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    for row, label in enumerate(("your picture", "--normalize none", "--normalize mnist")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def pick_examples(samples: list[Sample], predicted: dict[str, np.ndarray], picks: int) -> list[int]:
    """Mostly pictures the raw input gets wrong and the normalised right, one of each digit where possible, some on dark."""
    labels = np.array([s.label for s in samples])
    fixed = [i for i in range(len(samples)) if predicted["none"][i] != labels[i] and predicted["mnist"][i] == labels[i]]
    dark = [i for i in range(ISSUE_SET, len(samples)) if not samples[i].dark_ink]
    chosen, seen = [], set()
    for i in [*fixed[:3], *dark[:1], *fixed[3:], *range(len(samples))]:
        if labels[i] not in seen and len(chosen) < picks:
            chosen.append(i)
            seen.add(labels[i])
    return chosen


def markdown(rows: list[tuple[str, int, float, float]], args: argparse.Namespace, started: str, picture: Path, predicted: dict) -> str:
    name, n, raw, normalised = rows[0]
    ratio = f"{normalised / raw:.2f}x" if raw else "n/a"
    test = predicted["test_accuracy"]
    own = f"The model's accuracy on the project's prepared test split: {test:.1%}. " if test is not None else ""
    lines = [
        SECTION_START,
        "## Predicting your own images: whole picture resized vs normalised as MNIST",
        "",
        f"Run {started}: `python -m benchmarks.predict_normalize --model {args.model} --root {args.root} --count {args.count} --seed {args.seed}`; "
        f"model `{args.model}` of that project, trained on {predicted['trained_on']}{f' ({args.model_note})' if args.model_note else ''}. "
        f"{n} typeset digits rendered with Pillow in the DejaVu fonts (see the script), classified through `digitlab.predict.model_inputs`: "
        "`--normalize none` (the old behaviour: the whole picture resized to 28x28, inverted when its border is light) vs "
        "`--normalize mnist` (ink cropped, fitted to 20x20, centred by its centre of mass in 28x28). "
        f"{own}Picture: [{picture.name}](../docs/{picture.name}).",
        "",
        f"**All {n} images: {raw:.1%} raw, {normalised:.1%} normalised ({ratio}).**",
        "",
        "| images | n | raw (--normalize none) | normalised (--normalize mnist) | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, n, raw, normalised in rows:
        lines.append(f"| {name} | {n} | {raw:.1%} | {normalised:.1%} | {f'{normalised / raw:.2f}x' if raw else 'n/a'} |")
    return "\n".join([*lines, SECTION_END, ""])


def write_section(path: Path, section: str) -> None:
    """This script's section of RESULTS.md, in place of its previous one."""
    from benchmarks.sections import write_section as write

    write(path, section, SECTION_START, SECTION_END)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", help="what digitlab predict --model takes (default: the project's cnn)")
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the project (its params.yaml, models/, data/prepared)")
    parser.add_argument("--model-note", default="", help="how the model was made, for RESULTS.md")
    parser.add_argument("--count", type=int, default=200, help="pictures to render (the first ten are the issue's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="render the pictures into this folder and keep them")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md is (its predict-normalize section)")
    parser.add_argument("--figure", type=Path, default=HERE.parent / "docs" / "predict-normalize.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from digitlab.errors import DigitlabError

    args = parse_args(argv)
    args.root = args.root.resolve()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="digitlab-digits-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        samples = make_set(folder, args.count, args.seed)
        try:
            predicted = classify(samples, args.model, args.root)
        except DigitlabError as error:  # no trained model: say which and how to get one
            raise SystemExit(f"predict_normalize: {error}") from None
        rows = accuracies(samples, predicted)
        picture = figure(samples, predicted, args.figure)
    if predicted["test_accuracy"] is not None:
        print(f"model {args.model}: {predicted['test_accuracy']:.1%} on its prepared test split")
    print(f"{'images':<52} {'n':>4} {'raw':>7} {'normalised':>11} {'ratio':>6}")
    for name, n, raw, normalised in rows:
        print(f"{name:<52} {n:>4} {raw:>7.1%} {normalised:>11.1%} {f'{normalised / raw:.2f}x' if raw else 'n/a':>6}")
    write_section(args.out_dir / "RESULTS.md", markdown(rows, args, started, picture, predicted))
    print(f"wrote {picture} and the predict-normalize section of {args.out_dir / 'RESULTS.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
