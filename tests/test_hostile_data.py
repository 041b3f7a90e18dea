"""Nothing lost, nothing leaked: the user's folder is read in place, hostile files are skipped or refused,
odd class names survive every figure, and a CIFAR archive cannot run code."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from digitlab.data.download import download_dataset
from digitlab.data.images import decode_image
from digitlab.data.prepared import load_meta
from digitlab.data.preprocess import prepare_dataset
from digitlab.data.sources import parse_dataset
from digitlab.data.sources.cifar import read_cifar_archive
from digitlab.data.sources.folder import read_image_folder, scan_image_folder
from digitlab.errors import ConfigError, DigitlabError
from digitlab.evaluation import plots
from digitlab.settings import load_settings
from tests.conftest import ROOT, run
from tests.data_helpers import cifar_tarball_bytes, sha256


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# --- valid images of every awkward kind decode correctly ------------------------------------------


def test_awkward_but_valid_images_decode_correctly(tmp_path: Path) -> None:
    one = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "one.png")
    assert decode_image(one, (4, 4, 3)).reshape(-1, 3).tolist() == [[10, 20, 30]] * 16

    deep = _save(Image.fromarray(np.full((6, 6), 40000, np.uint16)), tmp_path / "deep.png")
    assert Image.open(deep).mode.startswith("I")
    assert (decode_image(deep, (6, 6, 1)) == round(40000 / 257)).all()  # scaled to 8 bits, not clipped to 255

    cmyk = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    red = decode_image(cmyk, (8, 8, 3)).reshape(-1, 3).mean(axis=0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15

    palette = Image.new("P", (8, 4), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (4, 0, 8, 4))
    transparent = _save(palette, tmp_path / "palette.png", transparency=0)
    pixels = decode_image(transparent, (4, 8, 3))
    assert (pixels[:, :4] == 255).all() and pixels[:, 4:].reshape(-1, 3).tolist() == [[0, 0, 255]] * 16  # transparent on white

    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    apng = _save(frames[1], tmp_path / "anim.png", save_all=True, append_images=frames[:1], duration=100)
    assert Image.open(gif).n_frames == 2 and Image.open(apng).n_frames == 2
    assert decode_image(gif, (6, 6, 3))[..., 0].min() > 240  # the first frame: red
    assert decode_image(apng, (6, 6, 3))[..., 2].min() > 240  # the first frame: blue

    stored = Image.new("RGB", (20, 10), (255, 0, 0))
    stored.paste((0, 0, 255), (10, 0, 20, 10))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = _save(stored, tmp_path / "rotated.jpg", exif=exif, quality=100)
    upright = decode_image(rotated, (20, 10, 3)).astype(int)
    assert upright[:8, :, 0].min() > 200 and upright[12:, :, 2].min() > 200  # displayed: red on top, blue below


# --- hostile files are skipped with one line each, never a traceback -----------------------------


def _bomb(path: Path, side: int) -> Path:
    """A tiny PNG that claims side x side pixels (1-bit, all zero: compresses to almost nothing)."""
    return _save(Image.new("1", (side, side)), path)


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    root = tmp_path / "hostile"
    for label in ("good", "mixed"):
        for i in range(2):
            _save(Image.new("L", (8, 8), 40 + 100 * i), root / label / f"ok{i}.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    (root / "mixed" / "truncated.png").write_bytes(buffer.getvalue()[:60])
    (root / "mixed" / "notes.png").write_text("not an image at all")
    _bomb(root / "mixed" / "bomb.png", 11_000)  # 121 M pixels: over twice the limit, Pillow's DecompressionBombError
    _bomb(root / "mixed" / "warned.png", 8_000)  # 64 M pixels: over the limit, Pillow's DecompressionBombWarning
    return root


def test_hostile_images_are_skipped_with_one_warning_line_each(hostile_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        x, y, names = read_image_folder(hostile_folder, (8, 8, 1))
    assert names == ["good", "mixed"] and y.tolist() == [0, 0, 1, 1] and x.shape == (4, 8, 8, 1)
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(lines) == 4 and all("\n" not in line and "Traceback" not in line for line in lines)
    why = {Path(line.split(": ", 1)[0].removeprefix("skipping ")).name: line for line in lines}
    assert "truncated" in why["truncated.png"] or "damaged" in why["truncated.png"]
    assert "not an image Pillow can read" in why["notes.png"]
    assert "decompression bomb" in why["bomb.png"] and "decompression bomb" in why["warned.png"]
    assert not any(record.exc_info for record in caplog.records)


def test_the_pixel_limit_is_a_setting_and_an_emptied_class_is_named(hostile_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(Image.new("L", (40, 40), 9), hostile_folder / "good" / "large.png")
    with caplog.at_level(logging.WARNING):
        folder = scan_image_folder(hostile_folder, max_pixels=1000)  # 1,600 pixels: over this limit
    assert [p.name for p, _ in folder.files] == ["ok0.png", "ok1.png", "ok0.png", "ok1.png"]
    assert "large.png" in caplog.text and "1000" in caplog.text
    for path in (hostile_folder / "mixed").glob("ok*.png"):
        path.unlink()
    with pytest.raises(DigitlabError, match=f"class folder {hostile_folder / 'mixed'} holds no readable image"):
        read_image_folder(hostile_folder, (8, 8, 1))
    config = parse_dataset({"name": "h", "source": "folder", "path": "x", "image_shape": [8, 8, 1], "validation_size": 1, "test_size": 1, "max_image_pixels": 1000})
    assert config.max_image_pixels == 1000
    with pytest.raises(ConfigError, match="dataset.max_image_pixels"):
        parse_dataset({**config.model_dump(), "max_image_pixels": 0})


def test_parallel_decoding_keeps_the_sorted_order(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for i in range(40):
            _save(Image.new("L", (5 + i % 7, 6), (i * 6 + (label == "b")) % 256), tmp_path / label / f"{i:03d}.png")
    serial = read_image_folder(tmp_path, (6, 6, 1), workers=1)
    parallel = read_image_folder(tmp_path, (6, 6, 1), workers=4)
    np.testing.assert_array_equal(serial[0], parallel[0])
    np.testing.assert_array_equal(serial[1], parallel[1])


# --- class names survive meta.json and every figure --------------------------------------------

ODD_NAMES = ["a b", "café", "数字", "$x^2$ 50% & #1 {a_b}", "$\\frac{$", "\\$y$"]


def test_odd_class_names_survive_preprocess_and_every_figure(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    for index, name in enumerate(ODD_NAMES):
        for i in range(6):
            _save(Image.new("L", (7, 7), 30 * index + i), root / name / f"{i}.png")
    config = parse_dataset({"name": "odd", "source": "folder", "path": str(root), "image_shape": [7, 7, 1], "validation_size": 6, "test_size": 6})
    download_dataset(config, tmp_path / "raw", tmp_path / "cache", root=tmp_path)
    meta = prepare_dataset(config, tmp_path / "raw", tmp_path / "prepared")
    expected = sorted(ODD_NAMES)
    assert meta.class_names == expected and load_meta(tmp_path / "prepared").class_names == expected
    assert json.loads((tmp_path / "prepared" / "meta.json").read_text(encoding="utf-8"))["class_names"] == expected
    assert (tmp_path / "prepared" / "samples.png").read_bytes()[:4] == b"\x89PNG"

    k = len(expected)
    rng = np.random.default_rng(0)
    y = np.arange(4 * k) % k
    probabilities = rng.dirichlet(np.ones(k), size=len(y))
    figures = [
        plots.confusion_matrix_figure(np.eye(k, dtype=int) * 3, expected),
        plots.roc_figure(y, probabilities, expected, classes_shown=k),
        plots.image_grid_figure(np.zeros((k, 7, 7, 1), np.uint8), expected, expected[::-1]),
        plots.weight_maps_figure(rng.normal(size=(k, 7, 7)), expected),
        plots.training_curves_figure({name: {"epoch": [1, 2], "loss": [1, 0.5], "accuracy": [0.5, 0.6], "val_loss": [1, 0.6], "val_accuracy": [0.4, 0.5]} for name in expected}),
    ]
    for figure in figures:
        texts = [text for text in figure.findobj(lambda artist: hasattr(artist, "get_text") and hasattr(artist, "_preprocess_math"))]
        assert plots.png_bytes(figure)[:4] == b"\x89PNG"  # mathtext would fail on "\frac{" or mangle "$x^2$"
        shown = [text._preprocess_math(text.get_text()) for text in texts]
        assert all(ismath is False for _, ismath in shown)
        assert any(name in rendered for name in expected for rendered, _ in shown)



@functools.cache  # reads every installed font file: once per character and session
def _font_with(character: str) -> str | None:
    """An installed font file that has ``character`` (read from the files, as fontconfig would), or None."""
    from matplotlib import font_manager, ft2font

    for path in sorted(set(font_manager.findSystemFonts()) | {entry.fname for entry in font_manager.fontManager.ttflist}):
        if "LastResort" in path:  # matplotlib's: a box naming the character's Unicode block, for every character
            continue
        try:
            if ord(character) in ft2font.FT2Font(path).get_charmap():
                return path
        except (OSError, RuntimeError, ValueError):
            continue
    return None


def _drawn(text: str) -> np.ndarray:
    """The pixels of ``text`` drawn alone, as a class name in a figure."""
    figure = plots.plt.figure(figsize=(1, 0.6))
    figure.text(0.5, 0.5, plots.plain_text(text), ha="center", va="center", fontsize=24)
    return np.asarray(Image.open(io.BytesIO(plots.png_bytes(figure))))


def test_class_names_in_chinese_are_drawn_in_their_own_letters_not_as_boxes() -> None:
    """DejaVu Sans, matplotlib's font, has no Chinese: every character was the same empty box, with a warning
    per character and figure. An installed font that has them is now used for them, with no warning."""
    from tests.stack_fixtures import require

    require("a font with Chinese characters", None if _font_with("数") else "no installed font has 数 (Debian: apt-get install fonts-wqy-microhei)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Glyph ... missing from font(s)"
        number, character = _drawn("数"), _drawn("字")
    assert not np.array_equal(number, character), "both drawn as the same box"
    assert (number < 128).any(), "nothing drawn"


def test_characters_no_installed_font_has_are_named_once_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    hieroglyph = "\U00013000"  # EGYPTIAN HIEROGLYPH A001: in no font a test machine has, unless Noto's hieroglyphs
    if _font_with(hieroglyph):
        pytest.skip(f"an installed font has U+13000: {_font_with(hieroglyph)}")
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="digitlab"):
        warnings.simplefilter("error")  # matplotlib's own warning, once per figure and character, is left out
        for _ in range(2):
            _drawn(f"man {hieroglyph}")
    lines = [record.getMessage() for record in caplog.records if hieroglyph in record.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "no installed font has" in lines[0] and "install a font" in lines[0], lines[0]


@pytest.mark.slow
def test_a_folder_named_in_chinese_runs_its_data_stages_with_its_letters_drawn(project: Path) -> None:
    """`dvc repro download preprocess` on your own folder whose classes are named in Chinese, plus one named in
    a script no installed font has: no matplotlib warning per glyph, one line naming what no font draws."""
    from tests.stack_fixtures import require

    require("a font with Chinese characters", None if _font_with("数") else "no installed font has 数 (Debian: apt-get install fonts-wqy-microhei)")
    hieroglyph = "\U00013000"
    names = ["数字", "猫"] + ([] if _font_with(hieroglyph) else [hieroglyph])
    rng = np.random.default_rng(0)
    for name in names:
        for index in range(6):
            _save(Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)), project / "photos" / name / f"{index}.png")
    run(["digitlab", "params", "dataset=folder", "dataset.path=photos", "dataset.image_shape=[8,8,1]",
         "dataset.validation_size=3", "dataset.test_size=6"], project)  # fmt: skip
    done = run(["dvc", "repro", "download", "preprocess"], project)
    output = done.stdout + done.stderr
    assert "Running stage 'preprocess'" in output and (project / "data" / "prepared" / "samples.png").is_file()
    assert "Glyph" not in output and "Traceback" not in output, output[-3000:]
    named = [line for line in output.splitlines() if "no installed font has" in line]
    assert len(named) == (0 if _font_with(hieroglyph) else 1), output[-3000:]
    assert all(hieroglyph in line and "数" not in line.split("(in")[0] for line in named), named


# --- CIFAR: verified again, unpickled with a restricted unpickler ------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _cifar_with(member: str, payload: bytes) -> bytes:
    good = tarfile.open(fileobj=io.BytesIO(cifar_tarball_bytes("cifar10", per_batch=2, n_test=2)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info in good.getmembers():
            data = payload if info.name.endswith(member) else good.extractfile(info).read()  # type: ignore[union-attr]
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_cifar_archive_with_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for member, payload in (
        ("data_batch_1", pickle.dumps({b"data": _Evil(marker)}, protocol=2)),
        ("batches.meta", pickle.dumps(_Evil(marker), protocol=2)),
        ("test_batch", b"cbuiltins\neval\n(Vopen(%r,'w')\ntR." % str(marker)),
    ):
        path = tmp_path / f"evil-{member}.tar.gz"
        path.write_bytes(_cifar_with(member, payload))
        with pytest.raises(DigitlabError, match="refused") as error:
            read_cifar_archive(path)
        assert member in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
        assert not marker.exists()

    good = tmp_path / "good.tar.gz"
    good.write_bytes(cifar_tarball_bytes("cifar10", per_batch=2, n_test=2))
    cifar = read_cifar_archive(good, sha256=sha256(good.read_bytes()))
    assert cifar.x_train.shape == (10, 32, 32, 3) and cifar.class_names[0] == "airplane"


def test_a_cifar_file_changed_since_the_download_is_refused_before_unpickling(tmp_path: Path) -> None:
    data = cifar_tarball_bytes("cifar10", per_batch=2, n_test=2)
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(_cifar_with("test_batch", pickle.dumps(_Evil(tmp_path / "pwned"), protocol=2)))
    with pytest.raises(DigitlabError, match="changed since the download stage verified it") as error:
        read_cifar_archive(path, sha256=sha256(data))
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()


# --- the folder may not lie in a stage output --------------------------------------------------


@pytest.mark.parametrize("path", ["data/raw/mine", "data/prepared/x", "models/imgs", "reports", ".", "data"])
def test_a_folder_inside_or_holding_a_stage_output_is_refused(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    folder = yaml.safe_load((ROOT / "conf" / "dataset" / "folder.yaml").read_text())
    folder.pop("defaults")  # Hydra's (the recipes' augmentation), not a dataset setting
    with pytest.raises(ConfigError, match=r"^dataset\.path=") as error:
        load_settings({**params, "dataset": {**folder, "name": "mine", "path": path}})
    assert "\n" not in str(error.value) and "stage output" in str(error.value)
    load_settings({**params, "dataset": {**folder, "name": "other", "path": "data/raw/mine"}})  # data/raw/other is the output
    load_settings({**params, "dataset": {**folder, "path": str(tmp_path / "elsewhere")}})


# --- in a real DVC project: the folder under data/raw/ is read in place, byte for byte ------------


@pytest.mark.slow
def test_dvc_reads_a_folder_under_data_raw_in_place_and_reruns_when_an_image_is_added(project: Path) -> None:
    images, rng = project / "data" / "raw" / "mine", np.random.default_rng(0)

    def add(name: str, index: int) -> None:
        _save(Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)), images / name / f"{index}.png")

    for index in range(10):
        add("circle", index), add("square", index)
    (images / "README.txt").write_text("my notes")
    before = _snapshot(images)
    bad = run(["python", "-m", "pipeline.download", "dataset=folder", "dataset.name=mine", "dataset.path=data/raw/mine"], project, check=False)
    assert bad.returncode == 2 and "dataset.path='data/raw/mine' is not valid" in bad.stderr.strip().splitlines()[-1]

    run(["digitlab", "params", "dataset=folder", "dataset.path=data/raw/mine", "dataset.image_shape=[8,8,1]",
         "dataset.validation_size=2", "dataset.test_size=4"], project)  # fmt: skip
    first = run(["dvc", "repro", "download", "preprocess"], project)
    assert "Running stage 'download'" in first.stdout and "Running stage 'preprocess'" in first.stdout
    assert _snapshot(images) == before
    assert [p.name for p in (project / "data" / "raw" / "folder").iterdir()] == ["source.json"]  # no copy
    manifest = json.loads((project / "data" / "raw" / "folder" / "source.json").read_text())["folder"]
    assert manifest["path"] == str(images.resolve()) and manifest["images"] == 20 and manifest["skipped"][0]["file"] == "README.txt"
    assert sum(load_meta(project / "data" / "prepared").counts["train"].values()) == 14
    assert "Running stage" not in run(["dvc", "repro", "download", "preprocess"], project).stdout

    add("square", 10)
    before = _snapshot(images)
    again = run(["dvc", "repro", "download", "preprocess"], project)
    assert "Running stage 'download'" in again.stdout and "Running stage 'preprocess'" in again.stdout
    assert _snapshot(images) == before
    assert sum(load_meta(project / "data" / "prepared").counts["train"].values()) == 15


def test_preprocess_notices_a_folder_changed_since_the_download_stage(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for i in range(4):
            _save(Image.new("L", (5, 5), 60 * i), tmp_path / "imgs" / label / f"{i}.png")
    config = parse_dataset({"name": "ab", "source": "folder", "path": "imgs", "image_shape": [5, 5, 1], "validation_size": 2, "test_size": 2})
    download_dataset(config, tmp_path / "raw", tmp_path / "cache", root=tmp_path)
    _save(Image.new("L", (5, 5), 1), tmp_path / "imgs" / "b" / "new.png")
    with pytest.raises(DigitlabError, match=r"changed since the download stage listed it \(8 images in 2 classes, now 9 in 2\): rerun"):
        prepare_dataset(config, tmp_path / "raw", tmp_path / "prepared")
