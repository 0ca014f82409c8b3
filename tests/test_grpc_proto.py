"""The committed Python code for detect.proto is what protoc generates from it now (not stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import generate_proto
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    files = generate_proto.generate(tmp_path)
    committed = ROOT / "detect_api" / "proto" / "rtdetect" / "v1"
    assert files == {name: (committed / name).read_text() for name in generate_proto.GENERATED}
    # And the comparison notices a difference: a field added to a copy of the .proto changes the output.
    proto = (generate_proto.PROTO_ROOT / generate_proto.PROTO).read_text()
    assert "message GetModelRequest {}" in proto
