"""Every `RTDETECT_*` name the README and docs/ mention is one a settings class reads (or a documented
script variable that a script reads): a documented setting nothing reads fails here, before a user finds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from detect_api.settings import Settings as DetectSettings
from engine_build.__main__ import BuildSettings
from inference.engines.options import OPTIONS
from inference.settings import LEGACY_ONNXRUNTIME_KEYS
from media_server.settings import Settings as MediaSettings
from web.settings import Settings as UiSettings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAME = re.compile(r"RTDETECT_[A-Z0-9_]*[A-Z0-9]")
# Longest prefix first: RTDETECT_MEDIA_PORT is the media server's, RTDETECT_PORT the detect API's.
CLASSES: list[tuple[str, list[type[BaseSettings]]]] = [
    ("RTDETECT_MEDIA_", [MediaSettings]),
    ("RTDETECT_UI_", [UiSettings]),
    ("RTDETECT_", [DetectSettings, BuildSettings]),
]
# Read by the launch scripts and tools, not by a server: each must appear in the file named.
SCRIPT_VARIABLES = {
    "RTDETECT_WITH_PROMETHEUS": "scripts/run.sh",
    "RTDETECT_UI_PORT": "scripts/run.sh",
    "RTDETECT_PROMETHEUS_PORT": "scripts/run_prometheus.sh",
    "RTDETECT_DCGM_PORT": "scripts/run_prometheus.sh",
    "RTDETECT_TOOLS_API_KEY": "tools/reliability.py",
}
PREFIXES_ALONE = {"RTDETECT_MEDIA", "RTDETECT_UI"}  # "the RTDETECT_MEDIA_ prefix", not a setting


def _fields(cls: type[BaseSettings]) -> set[str]:
    names = set()
    for name in cls.model_fields:
        names.add(name.upper())
        for option in OPTIONS[name].model_fields if name in OPTIONS else ():
            names.add(f"{name.upper()}__{option.upper()}")  # nested backend options
    return names


def _documented() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in DOCS:
        for name in set(NAME.findall(path.read_text())):
            found.setdefault(name, []).append(path.name)
    return found


def _reader(name: str) -> str | None:
    """Which settings class reads `name` (as a field, a nested option or a legacy spelling)."""
    for prefix, classes in CLASSES:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        for cls in classes:
            if rest in _fields(cls) or rest.lower() in LEGACY_ONNXRUNTIME_KEYS:
                return cls.__module__
        return None
    return None


def test_every_documented_setting_is_read_by_something() -> None:
    unknown = []
    for name, where in sorted(_documented().items()):
        if name in PREFIXES_ALONE or _reader(name) is not None:
            continue
        script = SCRIPT_VARIABLES.get(name)
        if script is not None and name in (ROOT / script).read_text():
            continue
        unknown.append(f"{name} ({', '.join(sorted(where))})")
    assert not unknown, "documented but read by no settings class or script: " + "; ".join(unknown)


def test_the_check_catches_a_setting_nothing_reads() -> None:
    assert _reader("RTDETECT_MEDIA_API_KEY_HASHES") == "media_server.settings"
    assert _reader("RTDETECT_ONNXRUNTIME__INTRA_OP_THREADS") == "detect_api.settings"
    assert _reader("RTDETECT_MEDIA_NO_SUCH_THING") is None
    assert _reader("RTDETECT_TRITON__ADDRESS") is None  # the nested option is RTDETECT_TRITON__URL


@pytest.mark.parametrize(
    ("prefix", "settings"), [("RTDETECT_", DetectSettings), ("RTDETECT_MEDIA_", MediaSettings)]
)
def test_documented_lists_take_commas_and_json(
    monkeypatch: pytest.MonkeyPatch, prefix: str, settings: type[BaseSettings]
) -> None:
    """The list settings both servers document, set as operators type them: one value, commas, JSON."""
    proxies = ["10.0.0.0/8", "192.168.1.2"]
    for value in ("10.0.0.0/8", "10.0.0.0/8, 192.168.1.2", '["10.0.0.0/8", "192.168.1.2"]'):
        monkeypatch.setenv(f"{prefix}TRUSTED_PROXIES", value)
        monkeypatch.setenv(
            f"{prefix}ONNXRUNTIME__PROVIDERS", value.replace("10.0.0.0/8", "CPUExecutionProvider")
        )
        got = settings()
        want = proxies[: 1 if "," not in value else 2]
        assert [str(p) for p in got.trusted_proxies] == want, value  # type: ignore[attr-defined]
        providers = got.onnxruntime.providers  # type: ignore[attr-defined]
        assert providers == ["CPUExecutionProvider", "192.168.1.2"][: len(want)], value
