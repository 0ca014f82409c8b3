"""Detections drawn onto outgoing video, cheaply enough for every frame of every peer.

Boxes change only when a new detection result arrives (a few times a second per peer) while frames go out
30 times a second. So the boxes are rendered once per result, with the shared `draw_detections`, into an
overlay in the decoder's own pixel layout (I420 = yuv420p); each outgoing frame then only gets a masked copy
(about 0.2 ms for 640x480) instead of YUV -> BGR, drawing and BGR -> YUV.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
from av import VideoFrame

from inference.draw import draw_detections
from inference.types import Detection
from media_server.frames import i420_array


@dataclasses.dataclass(frozen=True, eq=False)
class Overlay:
    """The detections of one result, rendered for one (even) frame size."""

    detections: tuple[Detection, ...]
    width: int
    height: int
    indices: np.ndarray  # flat indices into the I420 array of the pixels the drawing covers
    values: np.ndarray  # their values, limited range (yuv420p)
    values_full: np.ndarray  # the same, full range (yuvj420p, what browsers' H264 often decodes to)
    _resized: dict[tuple[int, int], Overlay] = dataclasses.field(default_factory=dict, repr=False)

    def apply(self, frame: VideoFrame) -> VideoFrame:
        """A new frame with the boxes drawn, in the input's pixel format, with its pts and time_base.

        `frame` must be normalized (`media_server.frames.normalize`). It is read through its plane buffers
        and not modified: a worker thread may be converting it for inference at the same time.
        """
        if (frame.width, frame.height) != (self.width, self.height):
            return self.resized(frame.width, frame.height).apply(frame)
        i420 = i420_array(frame)
        full_range = frame.format.name == "yuvj420p"
        i420.reshape(-1)[self.indices] = self.values_full if full_range else self.values
        out = VideoFrame.from_ndarray(i420, format=frame.format.name)
        out.pts = frame.pts
        if frame.time_base is not None:
            out.time_base = frame.time_base
        return out

    def resized(self, width: int, height: int) -> Overlay:
        """The same detections for another frame size (WebRTC senders may change resolution mid-stream);
        rendered once per size, on the caller's thread, as such changes are rare."""
        cached = self._resized.get((width, height))
        if cached is not None:
            return cached
        sx, sy = width / self.width, height / self.height
        scaled = tuple(
            dataclasses.replace(d, box=(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy))
            for d in self.detections
        )
        overlay = render_overlay(scaled, width, height)
        self._resized[(width, height)] = overlay
        return overlay


# Limited range (video levels) -> full range (JPEG levels).
_Y_TO_FULL = np.clip(np.round((np.arange(256) - 16) * (255 / 219)), 0, 255).astype(np.uint8)
_C_TO_FULL = np.clip(np.round(128 + (np.arange(256) - 128) * (255 / 224)), 0, 255).astype(np.uint8)


def render_overlay(detections: Sequence[Detection], width: int, height: int) -> Overlay:
    """Render `detections` once into an I420 overlay (a few ms: call it in a worker thread)."""
    if width % 2 or height % 2:
        raise ValueError(f"I420 needs even frame sides, got {width}x{height} (normalize the frame first)")
    dets = tuple(detections)
    # Draw on black and on white: a pixel the drawing left alone keeps its background in both, so this
    # finds the covered pixels even where the drawing itself is black or white (tag text), and gives each
    # pixel's coverage for anti-aliased edges.
    on_black = draw_detections(np.zeros((height, width, 3), np.uint8), dets, inplace=True)
    on_white = draw_detections(np.full((height, width, 3), 255, np.uint8), dets, inplace=True)
    # cv2 rather than numpy reductions over the colour axis: ~0.1 ms instead of ~10 ms for 640x480.
    transparency = cv2.cvtColor(cv2.absdiff(on_white, on_black), cv2.COLOR_BGR2GRAY)  # 255: untouched
    mask = transparency < 128  # covered by at least half
    covered = np.flatnonzero(mask)
    # On black the drawing is premultiplied by its coverage; undo that to get the colour itself.
    colour = on_black
    flat = colour.reshape(-1, 3)
    coverage = (255 - transparency.reshape(-1)[covered]).astype(np.float32)[:, None] / 255.0
    flat[covered] = np.clip(flat[covered] / coverage, 0, 255).astype(np.uint8)
    i420 = cv2.cvtColor(colour, cv2.COLOR_BGR2YUV_I420)  # limited range BT.601, as the VP8/H264 decoders
    # Chroma is subsampled 2x2: a chroma sample is covered when most of its four pixels are.
    area = cv2.resize(
        mask.view(np.uint8) * np.uint8(255), (width // 2, height // 2), interpolation=cv2.INTER_AREA
    )
    chroma = area >= 128
    # I420 is the Y plane, then U, then V, each contiguous: the mask flattens the same way.
    flat_chroma = chroma.reshape(-1)
    indices = np.flatnonzero(np.concatenate([mask.reshape(-1), flat_chroma, flat_chroma]))
    values = i420.reshape(-1)[indices]
    luma = indices < width * height
    values_full = np.where(luma, _Y_TO_FULL[values], _C_TO_FULL[values]).astype(np.uint8)
    return Overlay(dets, width, height, indices, values, values_full)


@dataclasses.dataclass(frozen=True, eq=False)
class Sprites:
    """One result's boxes as movable pieces: each detection's drawn pixels, to be placed per outgoing frame
    where its track is predicted to be at that frame's time (a shift, no re-rendering: about the cost of
    `Overlay.apply`).

    Rendered once per result with `render_overlay`; every covered pixel belongs to the first detection
    whose box (with its tag above it) contains it.
    """

    overlay: Overlay
    # Per detection: luma (N, 2) y/x and chroma (M, 2) y/x positions, and the indices into the overlay's
    # values of those pixels: luma, then U, then V.
    luma: tuple[np.ndarray, ...]
    chroma: tuple[np.ndarray, ...]
    luma_values: tuple[np.ndarray, ...]
    u_values: tuple[np.ndarray, ...]
    v_values: tuple[np.ndarray, ...]

    @property
    def detections(self) -> tuple[Detection, ...]:
        return self.overlay.detections

    def apply(self, frame: VideoFrame, offsets: Sequence[tuple[int, int]] | None = None) -> VideoFrame:
        """A new frame with each detection drawn shifted by its (dx, dy) pixels (rounded to even, so luma
        and chroma move together); no offsets: where they were detected. Same contract as `Overlay.apply`."""
        overlay = self.overlay
        if (
            offsets is None
            or not any(offsets)
            or (frame.width, frame.height) != (overlay.width, overlay.height)
        ):
            return overlay.apply(frame)
        w, h = overlay.width, overlay.height
        full_range = frame.format.name == "yuvj420p"
        values = overlay.values_full if full_range else overlay.values
        i420 = i420_array(frame)
        flat = i420.reshape(-1)
        cw, ch = w // 2, h // 2
        for k, (dx, dy) in enumerate(offsets):
            dx, dy = int(dx) & ~1, int(dy) & ~1
            yx = self.luma[k] + (dy, dx)
            keep = (yx[:, 0] >= 0) & (yx[:, 0] < h) & (yx[:, 1] >= 0) & (yx[:, 1] < w)
            flat[yx[keep, 0] * w + yx[keep, 1]] = values[self.luma_values[k][keep]]
            cyx = self.chroma[k] + (dy // 2, dx // 2)
            keep = (cyx[:, 0] >= 0) & (cyx[:, 0] < ch) & (cyx[:, 1] >= 0) & (cyx[:, 1] < cw)
            at = cyx[keep, 0] * cw + cyx[keep, 1]
            flat[w * h + at] = values[self.u_values[k][keep]]
            flat[w * h + cw * ch + at] = values[self.v_values[k][keep]]
        out = VideoFrame.from_ndarray(i420, format=frame.format.name)
        out.pts = frame.pts
        if frame.time_base is not None:
            out.time_base = frame.time_base
        return out


def render_sprites(detections: Sequence[Detection], width: int, height: int) -> Sprites:
    """`render_overlay`, split per detection (a few ms: call it in a worker thread)."""
    overlay = render_overlay(detections, width, height)
    indices = overlay.indices
    luma_n = width * height
    cw, ch = width // 2, height // 2
    is_luma = indices < luma_n
    is_u = (indices >= luma_n) & (indices < luma_n + cw * ch)
    is_v = indices >= luma_n + cw * ch
    luma_pos = np.flatnonzero(is_luma)
    u_pos, v_pos = np.flatnonzero(is_u), np.flatnonzero(is_v)
    ly, lx = np.divmod(indices[luma_pos], width)
    uy, ux = np.divmod(indices[u_pos] - luma_n, cw)
    # U and V are covered at the same chroma positions (one mask for both), in the same order.
    taken_l = np.zeros(len(luma_pos), bool)
    taken_c = np.zeros(len(u_pos), bool)
    thickness = max(1, round(min(height, width) / 320))
    tag = round(max(0.35, min(height, width) / 1000) * 30) + 4 * thickness  # the label tag's height, roughly
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for d in overlay.detections:
        x1, y1, x2, y2 = d.box
        x1, x2 = x1 - 2 * thickness, max(x2, x1 + 6 * tag) + 2 * thickness
        y1, y2 = y1 - tag - 2 * thickness, y2 + 2 * thickness
        mine_l = ~taken_l & (lx >= x1) & (lx <= x2) & (ly >= y1) & (ly <= y2)
        mine_c = ~taken_c & (ux * 2 >= x1) & (ux * 2 <= x2) & (uy * 2 >= y1) & (uy * 2 <= y2)
        taken_l |= mine_l
        taken_c |= mine_c
        parts.append(
            (
                np.stack([ly[mine_l], lx[mine_l]], axis=1),
                np.stack([uy[mine_c], ux[mine_c]], axis=1),
                luma_pos[mine_l],
                u_pos[mine_c],
                v_pos[mine_c],
            )
        )
    return Sprites(
        overlay,
        tuple(p[0] for p in parts),
        tuple(p[1] for p in parts),
        tuple(p[2] for p in parts),
        tuple(p[3] for p in parts),
        tuple(p[4] for p in parts),
    )
