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

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*self.cls_outputs, *self.reg_outputs)


class YoloV8DecoderSpec(BaseModel):
    """Ultralytics YOLOv8-style exports: one output [N, 4 + C, A], boxes cx, cy, w, h in input pixels."""

    model_config = ConfigDict(frozen=True)
    type: Literal["yolov8"] = "yolov8"
    output: str = "output0"
    scores_are_logits: bool = False  # Ultralytics exports already apply the sigmoid

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output,)


class YoloV5DecoderSpec(BaseModel):
    """YOLOv5-style exports: one output [N, A, 5 + C] = cx, cy, w, h (input pixels), objectness, C class
    scores; the score of a class is objectness x class score."""

    model_config = ConfigDict(frozen=True)
    type: Literal["yolov5"] = "yolov5"
    output: str = "output0"
    scores_are_logits: bool = False  # YOLOv5's export applies the sigmoid in the graph

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output,)


class YoloXDecoderSpec(BaseModel):
    """YOLOX: one output [N, A, 5 + C] like YOLOv5 (objectness x class, both through a sigmoid).

    `boxes="raw"` is what YOLOX's own tools/export_onnx.py writes by default (and its released .onnx files):
    per anchor of each stride's grid, x, y offsets from the cell corner in cells and log w, h; decoded here as
    ((x + gx) * s, (y + gy) * s, exp(w) * s, exp(h) * s). `boxes="decoded"` (export with
    --decode_in_inference) is cx, cy, w, h in input pixels already.
    """

    model_config = ConfigDict(frozen=True)
    type: Literal["yolox"] = "yolox"
    output: str = "output"
    boxes: Literal["raw", "decoded"] = "raw"
    strides: tuple[int, ...] = (8, 16, 32)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output,)


class EndToEndDecoderSpec(BaseModel):
    """NMS-free end-to-end heads (YOLOv10, YOLO26, exports with NMS inside): one output [N, K, 6] =
    x1, y1, x2, y2 (input pixels), score, class id. Unused rows have score 0."""

    model_config = ConfigDict(frozen=True)
    type: Literal["end2end"] = "end2end"
    output: str = "output0"

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output,)


class DetrDecoderSpec(BaseModel):
    """DETR family (RT-DETR, D-FINE, RF-DETR, ...): boxes [N, Q, 4] as cx, cy, w, h normalised to the input
    size and class scores [N, Q, C] (logits through a sigmoid unless `scores_are_logits` is false).
    The best query x class pairs are kept (top-k over all of them); no NMS."""

    model_config = ConfigDict(frozen=True)
    type: Literal["detr"] = "detr"
    boxes_output: str = "boxes"  # RF-DETR's exports call it "dets"
    logits_output: str = "logits"  # RF-DETR's exports call it "labels"
    scores_are_logits: bool = True

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.boxes_output, self.logits_output)


class TorchvisionDecoderSpec(BaseModel):
    """torchvision-style detection outputs, already through NMS: boxes [N, K, 4] x1, y1, x2, y2 in input
    pixels, labels [N, K] (class ids into class_names) and scores [N, K]; images with fewer than K
    detections pad with score 0."""

    model_config = ConfigDict(frozen=True)
    type: Literal["torchvision"] = "torchvision"
    boxes_output: str = "boxes"
    labels_output: str = "labels"
    scores_output: str = "scores"

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.boxes_output, self.labels_output, self.scores_output)


class TorchSource(BaseModel):
    """How to rebuild the unconverted PyTorch model: an importable factory plus a .pth state dict."""

    model_config = ConfigDict(frozen=True)
    factory: str  # "package.module:callable" returning an nn.Module
    weights: str = "model.pth"  # state dict, relative to the model directory
    kwargs: dict[str, str | int | float | bool] = Field(default_factory=dict)
    path_kwargs: tuple[str, ...] = ()  # kwargs whose values are files relative to the model directory


# One entry per registered decoder (inference.decoders.DECODERS): the `type` field picks both.
DecoderSpec = Annotated[
    NanoDetDecoderSpec
    | YoloV8DecoderSpec
    | YoloV5DecoderSpec
    | YoloXDecoderSpec
    | EndToEndDecoderSpec
    | DetrDecoderSpec
    | TorchvisionDecoderSpec,
    Field(discriminator="type"),
]

# What the served model's input tensor is. "float": float32 in `layout`/`color`, normalised with mean/std by
# the pre-processing. "uint8-nhwc" / "uint8-nchw": uint8 BGR pixels at the input size; the graph's first nodes
# cast, reorder the channels, normalise (mean/std) and transpose into what the network was trained on
# (`layout`, `color`), so serving only resizes and moves a quarter of the bytes.
InputFormat = Literal["float", "uint8-nhwc", "uint8-nchw"]


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    input_name: str = "input"
    input_width: int = Field(gt=0)
    input_height: int = Field(gt=0)
    input_format: InputFormat = "float"
    # The network's own input (what a "float" model is fed, and what a uint8 model's graph converts to).
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

    @property
    def input_dtype(self) -> Literal["float32", "uint8"]:
        """The dtype of the served model's input tensor."""
        return "float32" if self.input_format == "float" else "uint8"

    @property
    def input_layout(self) -> Literal["NCHW", "NHWC"]:
        """The layout of the served model's input tensor (a uint8 model's own, else the network's)."""
        if self.input_format == "uint8-nhwc":
            return "NHWC"
        if self.input_format == "uint8-nchw":
            return "NCHW"
        return self.layout

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
