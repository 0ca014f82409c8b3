"""The offline photo set for INT8 calibration and the accuracy gate (engine_build/evalset.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine_build import evalset
from engine_build.evalset import Photo, load_photos, names_sha256, split

needs_opencv_doc = pytest.mark.skipif(
    not (evalset.OPENCV_DATA / evalset.VIDEO_CLIP).is_file(),
    reason=f"Debian package {evalset.OPENCV_APT_PACKAGE} is not installed (make apt installs it)",
)


def _fake(names: list[str]) -> list[Photo]:
    return [Photo(n, np.zeros((4, 4, 3), np.uint8)) for n in names]


def test_split_is_disjoint_deterministic_and_stratified() -> None:
    names = [f"vtest/{i:04d}" for i in range(0, 800, 10)] + [f"opencv/s{i}.jpg" for i in range(12)]
    calibration, evaluation = split(_fake(names))
    cal, ev = {p.name for p in calibration}, {p.name for p in evaluation}
    assert not cal & ev and cal | ev == set(names)
    # Every source contributes to calibration (about a quarter of each).
    assert sum(n.startswith("opencv/") for n in cal) == 3
    assert sum(n.startswith("vtest/") for n in cal) == 20
    # The same names give the same split, whatever order they come in.
    again = split(_fake(list(reversed(names))))
    assert [p.name for p in again[0]] == [p.name for p in calibration]


def test_names_hash_ignores_order() -> None:
    assert names_sha256(["b", "a"]) == names_sha256(["a", "b"]) != names_sha256(["a"])


def test_missing_opencv_doc_leaves_the_package_photos(tmp_path: Path) -> None:
    photos = load_photos(opencv_data=tmp_path / "absent")
    assert {"skimage/astronaut", "skimage/coffee"} <= {p.name for p in photos}
    assert not any(p.name.startswith(("opencv/", "vtest/")) for p in photos)


@needs_opencv_doc
def test_real_set_has_60_evaluation_photos_disjoint_from_calibration() -> None:
    photos = load_photos()
    calibration, evaluation = split(photos)
    assert len(evaluation) >= evalset.MIN_EVAL_IMAGES
    assert len(calibration) >= 20
    assert not {p.name for p in calibration} & {p.name for p in evaluation}
    names = [p.name for p in photos]
    assert len(names) == len(set(names))
    assert "opencv/messi5.jpg" in names and "vtest/0000" in names
    for p in photos:
        assert p.image.dtype == np.uint8 and p.image.ndim == 3 and p.image.shape[2] == 3, p.name
        assert p.image.flags.c_contiguous
    assert next(p for p in photos if p.name == "vtest/0790").image.shape == (576, 768, 3)
