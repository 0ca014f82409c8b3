"""Generates the Python code for detect_api/proto/rtdetect/v1/detect.proto (committed beside it).

    .venv/bin/python scripts/generate_proto.py          # rewrite the generated files
    .venv/bin/python scripts/generate_proto.py --check  # exit 1 when they are stale (tests)

protoc writes absolute imports (`from rtdetect.v1 import detect_pb2`) that only work with the proto root on
sys.path; they are made relative here so the code imports as part of the detect_api package, while the
descriptors keep the file name `rtdetect/v1/detect.proto` that reflection clients see.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "detect_api" / "proto"
PROTO = Path("rtdetect") / "v1" / "detect.proto"
GENERATED = ("detect_pb2.py", "detect_pb2.pyi", "detect_pb2_grpc.py")
_ABSOLUTE_IMPORT = re.compile(r"^from rtdetect\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> dict[str, str]:
    """Run protoc (grpcio-tools) on `proto_root`/rtdetect/v1/detect.proto into `out_dir`; the generated
    files' text by name."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    files = {}
    for name in GENERATED:
        text = (out_dir / PROTO.parent / name).read_text()
        files[name] = _ABSOLUTE_IMPORT.sub(r"from . import \1", text)
    return files


def stale(proto_root: Path = PROTO_ROOT, target: Path = PROTO_ROOT / PROTO.parent) -> dict[str, str]:
    """The generated files whose committed copy in `target` differs from what the .proto gives now."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp), proto_root)
    return {
        name: text
        for name, text in files.items()
        if not (target / name).is_file() or (target / name).read_text() != text
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files are stale")
    args = parser.parse_args()
    target = PROTO_ROOT / PROTO.parent
    changed = stale()
    if args.check:
        for name in changed:
            print(f"{target / name} is stale: run python scripts/generate_proto.py", file=sys.stderr)
        return 1 if changed else 0
    for name, text in changed.items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
