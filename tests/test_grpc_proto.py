"""The committed Python code for detect.proto is what protoc generates from it now (not stale)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import generate_proto
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return generate_proto


def test_generated_code_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_a_changed_proto_makes_the_committed_code_stale(tmp_path: Path) -> None:
    gen = _generator()
    committed = gen.PROTO_ROOT / gen.PROTO.parent
    assert gen.stale() == {}
    # A copy of the .proto with one more field: the message modules change, and the check says so.
    root = tmp_path / "proto"
    shutil.copytree(gen.PROTO_ROOT / "rtdetect", root / "rtdetect")
    proto = root / gen.PROTO
    proto.write_text(
        proto.read_text().replace(
            "message GetModelRequest {}", "message GetModelRequest {\n  bool verbose = 1;\n}"
        )
    )
    changed = gen.stale(root, committed)
    assert set(changed) == {"detect_pb2.py", "detect_pb2.pyi"}  # the service (grpc module) is unchanged
    assert "verbose" in changed["detect_pb2.pyi"]
