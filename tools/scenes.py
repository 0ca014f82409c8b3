"""Synthetic scenes from real photos with known ground truth, for the tracking tests and the live benchmark.

A photo of a person (skimage's astronaut; the player in opencv-doc's messi5.jpg) is pasted onto a grey
background at a position that is a function of time, so the person's true box in every frame is known:
the box the real detector finds on the photo alone, moved with the photo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from av import VideoFrame

from inference.types import Box
from tools.synthetic import NumberedTrack, strip_height

MESSI = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")  # Debian opencv-doc
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
BACKGROUND = 118  # grey


@dataclass(frozen=True)
class Sprite:
    image: np.ndarray  # HxWx3 uint8 BGR
    person: Box  # the person's box inside the image (the detector's, on the photo alone)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def _scaled(image: np.ndarray, box: Box, height: int) -> Sprite:
    scale = height / image.shape[0]
    resized = cv2.resize(image, (round(image.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = box
    return Sprite(resized, (x1 * scale, y1 * scale, x2 * scale, y2 * scale))


@lru_cache(maxsize=4)
def astronaut(height: int = 240) -> Sprite:
    """skimage's astronaut, cropped to the person (boxes: NanoDet-g's on the photo alone)."""
    import skimage.data

    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    crop = photo[0:512, 0:380]
    return _scaled(np.ascontiguousarray(crop), (0.0, 11.0, 365.0, 512.0), height)


@lru_cache(maxsize=4)
def player(height: int = 200) -> Sprite:
    """The running player of opencv-doc's messi5.jpg, cropped around him."""
    photo = cv2.imread(str(MESSI))
    if photo is None:
        raise FileNotFoundError(f"{MESSI} (Debian package opencv-doc)")
    crop = photo[40:342, 150:420]
    return _scaled(np.ascontiguousarray(crop), (0.0, 21.0, 270.0, 299.0), height)


def pingpong(t: float, low: float, high: float, speed: float, phase: float = 0.0) -> float:
    """Back and forth between `low` and `high` at a constant `speed` (px/s), starting at `low` + `phase`."""
    span = high - low
    d = (phase + speed * t) % (2 * span)
    return low + (d if d <= span else 2 * span - d)


def glide(t: float, low: float, high: float, speed: float) -> float:
    """Back and forth between `low` and `high` along a sine whose mean speed is `speed` (px/s): as a
    person walks, turning smoothly rather than bouncing."""
    amplitude = (high - low) / 2
    omega = speed * math.pi / (2 * amplitude)  # mean |v| of A sin(wt) is 2Aw/pi
    return low + amplitude * (1 - math.cos(omega * t))


Path_ = Callable[[float], tuple[float, float]]  # time (s) -> the sprite's top-left corner


@dataclass
class Scene:
    """Sprites moving along paths on a grey background; the later sprite is drawn over the earlier."""

    sprites: list[tuple[Sprite, Path_]]
    width: int = 640
    height: int = 480

    def render(self, t: float) -> tuple[np.ndarray, list[Box]]:
        """The frame at time `t` (BGR) and each sprite's person box in it."""
        frame = np.full((self.height, self.width, 3), BACKGROUND, np.uint8)
        boxes: list[Box] = []
        for sprite, path in self.sprites:
            x, y = path(t)
            xi, yi = round(x), round(y)
            w, h = sprite.size
            x1, y1 = max(xi, 0), max(yi, 0)
            x2, y2 = min(xi + w, self.width), min(yi + h, self.height)
            if x2 > x1 and y2 > y1:
                frame[y1:y2, x1:x2] = sprite.image[y1 - yi : y2 - yi, x1 - xi : x2 - xi]
            b = sprite.person
            boxes.append((b[0] + xi, b[1] + yi, b[2] + xi, b[3] + yi))
        return frame, boxes


def moving_person(speed: float = 380.0, *, width: int = 640, height: int = 480, smooth: bool = True) -> Scene:
    """One person crossing the frame back and forth at about `speed` px/s (mean)."""
    sprite = astronaut()
    w, h = sprite.size
    y = (height - h) / 2
    move = glide if smooth else pingpong
    return Scene([(sprite, lambda t: (move(t, 0, width - w, speed), y))], width, height)


def swaying_person(
    amplitude: float = 120.0, period: float = 2.0, *, width: int = 640, height: int = 480
) -> Scene:
    """One person swaying left and right about the frame's centre along a sine (the box-prediction probe:
    2 s period and 120 px amplitude peak at 377 px/s and 1184 px/s^2)."""
    sprite = astronaut()
    w, h = sprite.size
    x0, y = (width - w) / 2, (height - h) / 2
    omega = 2 * math.pi / period
    return Scene([(sprite, lambda t: (x0 + amplitude * math.sin(omega * t), y))], width, height)


def two_crossing(speed: float = 150.0, *, width: int = 640, height: int = 480) -> Scene:
    """Two people walking towards each other, crossing (the lower one in front), turning at the edges."""
    a, b = astronaut(220), player(190)
    wa, _ = a.size
    wb, hb = b.size
    return Scene(
        [
            (a, lambda t: (glide(t, 0, width - wa, speed), 40.0)),
            (b, lambda t: (width - wb - glide(t, 0, width - wb, speed), height - hb - 110.0)),
        ],
        width,
        height,
    )


def read_clip(path: Path = VTEST, *, frames: int, step: int = 1) -> list[np.ndarray]:
    """The first `frames` * `step` frames of a video file, every `step`-th one (BGR)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"{path} (Debian package opencv-doc)")
    out: list[np.ndarray] = []
    try:
        index = 0
        while len(out) < frames:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0:
                out.append(frame)
            index += 1
    finally:
        capture.release()
    return out


class SceneTrack(NumberedTrack):
    """A `Scene` as a live video track: frame n shows the scene at n / fps, numbered in its code strip, so
    a receiver knows each frame's ground truth (`truth(n)`)."""

    def __init__(self, scene: Scene, *, fps: float = 30.0) -> None:
        super().__init__(scene.render(0.0)[0], fps=fps, width=scene.width, height=scene.height)
        self.scene = scene

    def truth(self, number: int) -> list[Box]:
        return self.scene.render(number / self.fps)[1]

    async def recv(self) -> VideoFrame:
        frame_bgr, _ = self.scene.render(self.sent / self.fps)
        i420 = np.asarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        # Neutral chroma under the code strip, as NumberedTrack's background has.
        w, h, sh = self.width, self.height, strip_height(self.height)
        chroma = i420.reshape(-1)[w * h :]
        chroma[: chroma.size // 2].reshape(h // 2, w // 2)[(h - sh) // 2 :] = 128
        chroma[chroma.size // 2 :].reshape(h // 2, w // 2)[(h - sh) // 2 :] = 128
        self._base = i420
        return await super().recv()
