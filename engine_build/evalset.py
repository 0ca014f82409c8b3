"""Real photos for INT8 calibration and the accuracy gate, all from packages (nothing fetched at run time).

Sources: scikit-image's sample images (pinned in the dev extra), matplotlib's sample data when it is
installed, and Debian's `opencv-doc` (stills such as messi5.jpg, plus every 10th frame of the vtest.avi
pedestrian clip). The split into calibration and evaluation images is a fixed function of each image's
names (stratified by source: within each source, images ordered by the hash of their names, every 4th to
calibration), so stills and video frames are in both and the split does not depend on what else a machine
has. Calibration and evaluation are disjoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("rtdetect.engine_build")

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_APT_PACKAGE = "opencv-doc"
# Stills with people, animals, fruit, vehicles, furniture; the FP32 model's own detections are the truth.
OPENCV_STILLS: tuple[str, ...] = (
    "messi5.jpg", "baboon.jpg", "fruits.jpg", "apple.jpg", "orange.jpg", "butterfly.jpg", "home.jpg",
    "building.jpg", "squirrel_cls.jpg", "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "stuff.jpg", "basketball1.png",
    "board.jpg", "pic1.png", "box_in_scene.png", "starry_night.jpg",
)  # fmt: skip
VIDEO_CLIP = "vtest.avi"  # 795 frames of pedestrians, 768x576
VIDEO_STEP = 10  # every 10th frame: 80 frames, consecutive picks 0.4 s apart
MATPLOTLIB_SAMPLES: tuple[str, ...] = ("grace_hopper.jpg",)
# Held out from both calibration and evaluation: a second opinion on a quantised model (recall against FP32
# on photos nothing was tuned on). Other stills of the same package, and the clip's frames halfway between
# the evaluation frames.
HOLDOUT_STILLS: tuple[str, ...] = (
    "basketball2.png", "pic2.png", "pic3.png", "pic4.png", "pic5.png", "pic6.png", "leuvenA.jpg",
    "leuvenB.jpg", "licenseplate_motion.jpg", "smarties.png", "rubberwhale1.png", "chicky_512.png",
    "aloeL.jpg", "ela_original.jpg", "Blender_Suzanne1.jpg",
)  # fmt: skip
HOLDOUT_VIDEO_OFFSET = 5
# One image in CALIBRATION_EVERY of each source goes to calibration, the rest to evaluation.
CALIBRATION_EVERY = 4
MIN_EVAL_IMAGES = 60


@dataclass(frozen=True, slots=True)
class Photo:
    name: str  # "<source>/<image>", stable across machines
    image: np.ndarray  # HxWx3 uint8 BGR, what every rtdetect entry point takes


def _bgr(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return np.ascontiguousarray(np.repeat(rgb[:, :, None], 3, axis=2))
    return np.ascontiguousarray(rgb[:, :, 2::-1])  # drops alpha too


def _skimage_photos() -> list[Photo]:
    try:
        from skimage import data
    except ImportError:
        log.warning("scikit-image is not installed: its sample photos are left out")
        return []
    loaders: dict[str, Callable[[], np.ndarray]] = {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: data.stereo_motorcycle()[1],
        "rocket": data.rocket,
        "camera": data.camera,
    }
    return [Photo(f"skimage/{name}", _bgr(load())) for name, load in loaders.items()]


def _matplotlib_photos() -> list[Photo]:
    try:
        from matplotlib import cbook
    except ImportError:
        return []  # optional: not a pinned dependency
    photos = []
    for name in MATPLOTLIB_SAMPLES:
        path = cbook.get_sample_data(name, asfileobj=False)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            photos.append(Photo(f"matplotlib/{name}", image))
    return photos


def _opencv_photos(data_dir: Path) -> list[Photo]:
    if not data_dir.is_dir():
        log.warning(
            "%s is missing: install the Debian package %s for its %d stills and the %s frames",
            data_dir, OPENCV_APT_PACKAGE, len(OPENCV_STILLS), VIDEO_CLIP,
        )  # fmt: skip
        return []
    photos = []
    for name in OPENCV_STILLS:
        image = cv2.imread(str(data_dir / name), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("cannot read %s: left out", data_dir / name)
            continue
        photos.append(Photo(f"opencv/{name}", image))
    photos.extend(video_frames(data_dir / VIDEO_CLIP, VIDEO_STEP))
    return photos


def video_frames(path: Path, step: int, offset: int = 0) -> list[Photo]:
    """Every `step`-th frame from `offset`, read sequentially (seeking is not frame-exact for every codec)."""
    cap = cv2.VideoCapture(str(path))
    photos: list[Photo] = []
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == offset:
                photos.append(Photo(f"{path.stem}/{index:04d}", frame))
            index += 1
    finally:
        cap.release()
    if not photos:
        log.warning("no frames read from %s", path)
    return photos


def load_photos(opencv_data: Path = OPENCV_DATA) -> list[Photo]:
    """Every available photo, sorted by name."""
    photos = _skimage_photos() + _matplotlib_photos() + _opencv_photos(opencv_data)
    return sorted(photos, key=lambda p: p.name)


def _name_key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def split(photos: Iterable[Photo]) -> tuple[list[Photo], list[Photo]]:
    """(calibration, evaluation): disjoint, each sorted by name."""
    by_source: dict[str, list[Photo]] = {}
    for photo in photos:
        by_source.setdefault(photo.name.partition("/")[0], []).append(photo)
    calibration: list[Photo] = []
    evaluation: list[Photo] = []
    for group in by_source.values():
        for i, photo in enumerate(sorted(group, key=lambda p: _name_key(p.name))):
            (calibration if i % CALIBRATION_EVERY == 0 else evaluation).append(photo)
    return sorted(calibration, key=lambda p: p.name), sorted(evaluation, key=lambda p: p.name)


def calibration_photos(opencv_data: Path = OPENCV_DATA) -> list[Photo]:
    return split(load_photos(opencv_data))[0]


def evaluation_photos(opencv_data: Path = OPENCV_DATA) -> list[Photo]:
    photos = split(load_photos(opencv_data))[1]
    if len(photos) < MIN_EVAL_IMAGES:
        log.warning(
            "only %d evaluation photos (want >= %d): install %s",
            len(photos),
            MIN_EVAL_IMAGES,
            OPENCV_APT_PACKAGE,
        )
    return photos


def holdout_photos(opencv_data: Path = OPENCV_DATA) -> list[Photo]:
    """Photos outside calibration and evaluation (empty without opencv-doc), sorted by name."""
    if not opencv_data.is_dir():
        log.warning("%s is missing: no held-out photos (install %s)", opencv_data, OPENCV_APT_PACKAGE)
        return []
    photos = []
    for name in HOLDOUT_STILLS:
        image = cv2.imread(str(opencv_data / name), cv2.IMREAD_COLOR)
        if image is not None:
            photos.append(Photo(f"holdout/{name}", image))
    photos += video_frames(opencv_data / VIDEO_CLIP, VIDEO_STEP, HOLDOUT_VIDEO_OFFSET)
    return sorted(photos, key=lambda p: p.name)


def names_sha256(names: Sequence[str]) -> str:
    """One hash for a set of images, recorded with what was calibrated or evaluated on them."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()
