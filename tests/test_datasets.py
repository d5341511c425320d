"""Dataset readers: fer2013.csv, npz, image folders, and label mapping into the model's order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, synthetic_faces
from fer_edge.data.datasets import load_faces
from fer_edge.runtime.errors import DataError
from fer_edge.data.labels import FERPLUS_LABELS


def write_fer_csv(path, faces, targets, usages, extra_rows=()):
    lines = ["emotion,pixels,Usage"]
    for face, target, usage in zip(faces, targets, usages):
        lines.append(f"{int(target)},{' '.join(str(v) for v in face.ravel())},{usage}")
    lines.extend(extra_rows)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fer_csv(tmp_path):
    x, y = synthetic_faces(12, size=48, seed=3)
    usages = ["Training"] * 6 + ["PublicTest"] * 4 + ["PrivateTest"] * 2
    return write_fer_csv(tmp_path / "fer2013.csv", x, y, usages), x, y


def test_csv_reads_all_rows_and_filters_by_usage(fer_csv):
    path, x, y = fer_csv
    everything = load_faces(path)
    assert len(everything) == 12 and everything.images.shape == (12, 48, 48)
    assert everything.images.dtype == np.uint8
    np.testing.assert_array_equal(everything.images, x)
    np.testing.assert_array_equal(everything.targets, y)
    public = load_faces(path, split="PublicTest")
    assert len(public) == 4 and public.source == "fer2013.csv [PublicTest]"
    np.testing.assert_array_equal(public.images, x[6:10])
    assert len(load_faces(path, limit=5)) == 5


@pytest.mark.parametrize("bad_row,message", [
    ("3,1 2 3,Training", "not a square image"),
    ("3," + " ".join(["300"] * 4) + ",Training", "not a square image"),
    ("9," + " ".join(["1"] * 4) + ",Training", "emotion codes must be 0..6"),
    ("x," + " ".join(["1"] * 4) + ",Training", "cannot read as fer2013.csv"),
])
def test_csv_bad_rows_are_data_errors(tmp_path, bad_row, message):
    x, y = synthetic_faces(2, size=2, seed=0)
    path = write_fer_csv(tmp_path / "bad.csv", x, y, ["Training"] * 2, [bad_row])
    with pytest.raises(DataError, match=message):
        load_faces(path)


def test_csv_wrong_columns_and_unknown_split(tmp_path, fer_csv):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("label,image\n1,2 3\n")
    with pytest.raises(DataError, match="expected the fer2013.csv columns"):
        load_faces(wrong)
    with pytest.raises(DataError, match="no rows with Usage == 'Validation'"):
        load_faces(fer_csv[0], split="Validation")


def test_npz_split_limit_and_unknown_split(synthetic_npz):
    everything = load_faces(synthetic_npz)
    assert len(everything) == 300 and everything.class_names == FER2013_LABELS
    public = load_faces(synthetic_npz, split="PublicTest")
    assert len(public) == 100
    np.testing.assert_array_equal(public.images, everything.images[200:])
    assert len(load_faces(synthetic_npz, split="Training", limit=7)) == 7
    with pytest.raises(DataError, match="unknown split 'Validation'"):
        load_faces(synthetic_npz, split="Validation")


def test_npz_without_arrays_is_a_data_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="arrays 'x'"):
        load_faces(path)


def test_npz_without_labels_is_an_unlabelled_set(tmp_path):
    path = tmp_path / "unlabelled.npz"
    x = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    np.savez(path, x=x)
    faces = load_faces(path)
    assert not faces.labelled and faces.targets is None and len(faces) == 5
    np.testing.assert_array_equal(faces.images, x)


def test_targets_follow_the_model_label_order(synthetic_npz, fer_csv):
    fer = load_faces(synthetic_npz)
    plus = load_faces(synthetic_npz, labels=FERPLUS_LABELS)
    assert plus.class_names == list(FERPLUS_LABELS)
    # Same faces, same class names, only the index order differs.
    fer_names = [FER2013_LABELS[t] for t in fer.targets]
    plus_names = [FERPLUS_LABELS[t] for t in plus.targets]
    synonyms = {"angry": "anger", "happy": "happiness", "sad": "sadness"}
    assert [synonyms.get(n, n) for n in fer_names] == plus_names
    csv_plus = load_faces(fer_csv[0], labels=FERPLUS_LABELS)
    assert [FERPLUS_LABELS[t] for t in csv_plus.targets] == [synonyms.get(FER2013_LABELS[t], FER2013_LABELS[t])
                                                             for t in fer_csv[2]]


def test_labels_missing_from_the_model_are_named(synthetic_npz):
    with pytest.raises(DataError, match="do not match the model's labels"):
        load_faces(synthetic_npz, labels=["happy", "sad"])


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_class_subfolders_with_synonyms(tmp_path):
    x, _ = synthetic_faces(6, size=40, seed=2)
    for i, folder in enumerate(["Angry", "happiness", "Sad"]):
        _write_png(tmp_path / folder / f"a{i}.png", x[2 * i])
        _write_png(tmp_path / folder / f"b{i}.png", cv2.cvtColor(x[2 * i + 1], cv2.COLOR_GRAY2BGR))
    (tmp_path / "Sad" / "notes.txt").write_text("not an image, ignored")
    faces = load_faces(tmp_path, labels=FER2013_LABELS)
    assert len(faces) == 6 and isinstance(faces.images, list)  # gray and BGR crops: kept as a list
    # Folders are read in sorted order (upper case first); each face gets its folder's class in model order.
    assert [FER2013_LABELS[t] for t in faces.targets] == ["angry"] * 2 + ["sad"] * 2 + ["happy"] * 2
    plain = load_faces(tmp_path)  # no model labels: the folder names are the classes
    assert plain.class_names == ["Angry", "Sad", "happiness"]
    assert plain.targets.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="do not match"):
        load_faces(tmp_path, labels=["neutral", "surprise"])


def test_flat_folder_is_unlabelled(tmp_path):
    x, _ = synthetic_faces(3, size=48, seed=4)
    for i, face in enumerate(x):
        _write_png(tmp_path / f"face_{i}.png", face)
    faces = load_faces(tmp_path)
    assert len(faces) == 3 and faces.targets is None and not faces.labelled
    np.testing.assert_array_equal(faces.images, x)


def test_empty_folder_non_images_and_corrupt_image(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="the folder is empty"):
        load_faces(empty)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "readme.md").write_text("hello")
    with pytest.raises(DataError, match="no images found"):
        load_faces(texts)
    corrupt = tmp_path / "corrupt" / "happy"
    corrupt.mkdir(parents=True)
    (corrupt / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_faces(tmp_path / "corrupt")


def test_missing_path_unknown_format_and_split_on_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_faces(tmp_path / "absent.npz")
    other = tmp_path / "faces.txt"
    other.write_text("x")
    with pytest.raises(DataError, match="unknown data format"):
        load_faces(other)
    with pytest.raises(DataError, match="--split applies to"):
        load_faces(tmp_path, split="PublicTest")


def test_16bit_png_gives_the_same_pixels_in_fer_demo_and_load_faces(tmp_path):
    """One rule for 16-bit files: keep the top 8 bits (value >> 8), whatever else the image holds."""
    from fer_edge.pipeline.video_io import open_source
    dim = np.array([[0, 255, 256, 257], [1000, 4095, 4096, 4100]], np.uint16)     # brightest pixel 4100
    full = np.array([[0, 256, 32768, 32895], [65280, 65407, 65534, 65535]], np.uint16)
    expected = {"a_dim.png": [[0, 0, 1, 1], [3, 15, 16, 16]], "b_full.png": [[0, 1, 128, 128], [255, 255, 255, 255]]}
    for name, pixels in (("a_dim.png", dim), ("b_full.png", full)):
        assert cv2.imwrite(str(tmp_path / name), pixels)
    with open_source(tmp_path) as source:                             # fer-demo's image and folder path
        demo = {frame.name: frame.image for frame in source}
    faces = load_faces(tmp_path)                                      # fer-bench, fer-export, calibration
    for i, (name, pixels) in enumerate(expected.items()):
        assert demo[name].dtype == np.uint8 and demo[name].tolist() == pixels
        np.testing.assert_array_equal(faces.images[i], demo[name])


def test_shared_data_dir_honours_fer_edge_shared(tmp_path, monkeypatch):
    from fer_edge.data.datasets import default_fer2013_publictest
    from fer_edge.data.paths import REPO_ROOT, shared_data_dir
    monkeypatch.setenv("FER_EDGE_SHARED", str(tmp_path))
    assert shared_data_dir() == tmp_path and default_fer2013_publictest() is None
    npz = tmp_path / "data" / "fer2013" / "fer2013_publictest.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, x=np.zeros((1, 2, 2), np.uint8))
    assert default_fer2013_publictest() == npz
    monkeypatch.delenv("FER_EDGE_SHARED")
    assert shared_data_dir() == REPO_ROOT.parent / "shared" or not (REPO_ROOT.parent / "shared").is_dir()
