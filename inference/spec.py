"""The model spec: everything needed to feed a model and read its outputs, stored beside it as model.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.errors import ModelLoadError

SPEC_FILENAME = "model.json"


class NanoDetDecoderSpec(BaseModel):
    """NanoDet / GFL heads: per stride, sigmoid class scores and a 4 x (reg_max+1) box distribution."""

    model_config = ConfigDict(frozen=True)
    type: Literal["nanodet"] = "nanodet"
    strides: tuple[int, ...] = (8, 16, 32)
    reg_max: int = 10
    cls_outputs: tuple[str, ...]  # [N, A_s, C] per stride, already through a sigmoid
    reg_outputs: tuple[str, ...]  # [N, A_s, 4 * (reg_max + 1)] per stride


class YoloV8DecoderSpec(BaseModel):
    """Ultralytics YOLOv8-style exports: one output [N, 4 + C, A], boxes cx, cy, w, h in input pixels."""

    model_config = ConfigDict(frozen=True)
    type: Literal["yolov8"] = "yolov8"
    output: str = "output0"
    scores_are_logits: bool = False  # Ultralytics exports already apply the sigmoid


class TorchSource(BaseModel):
    """How to rebuild the unconverted PyTorch model: an importable factory plus a .pth state dict."""

    model_config = ConfigDict(frozen=True)
    factory: str  # "package.module:callable" returning an nn.Module
    weights: str = "model.pth"  # state dict, relative to the model directory
    kwargs: dict[str, str | int | float | bool] = Field(default_factory=dict)
    path_kwargs: tuple[str, ...] = ()  # kwargs whose values are files relative to the model directory


DecoderSpec = Annotated[NanoDetDecoderSpec | YoloV8DecoderSpec, Field(discriminator="type")]


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    input_name: str = "input"
    input_width: int = Field(gt=0)
    input_height: int = Field(gt=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["BGR", "RGB"] = "BGR"
    # Normalisation in 0..255 units: x' = (x - mean) / std.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    resize: Literal["stretch", "letterbox"] = "stretch"
    pad_value: int = 114
    class_names: tuple[str, ...]
    decoder: DecoderSpec
    dynamic_batch: bool = True
    onnx_file: str = "model.onnx"
    torch_source: TorchSource | None = None
    licence: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save(self, directory: Path) -> Path:
        path = directory / SPEC_FILENAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelSpec:
        path = directory / SPEC_FILENAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as e:
            raise ModelLoadError(f"no model spec at {path}; run `python -m engine_build fetch` first") from e
        except ValidationError as e:
            raise ModelLoadError(f"invalid model spec {path}: {e}") from e


COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
