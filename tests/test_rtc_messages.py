"""The data channel's zones request and the zone-event counter's bounded labels."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from media_server.settings import Settings
from observability.live import LiveMetrics
from observability.metrics import new_registry
from rtc.messages import ZonesRequest

LEFT = {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1]]}
GATE = {"name": "gate", "a": [0.5, 0], "b": [0.5, 1]}


def test_a_zones_request_is_validated_and_limited() -> None:
    request = ZonesRequest.model_validate({"type": "zones", "zones": [LEFT], "lines": [GATE]})
    request.check_limit(2)
    assert request.to_message() == {
        "type": "zones",
        "zones": [{"name": "left", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0]]}],
        "lines": [{"name": "gate", "a": [0.5, 0.0], "b": [0.5, 1.0]}],
    }
    with pytest.raises(ValueError, match="at most 1"):
        request.check_limit(1)
    twice = ZonesRequest.model_validate(
        {"type": "zones", "zones": [LEFT], "lines": [{**GATE, "name": "left"}]}
    )
    with pytest.raises(ValueError, match="unique"):
        twice.check_limit(8)
    for bad in (
        {"type": "zones", "zones": [{**LEFT, "extra": 1}]},
        {"type": "zones", "zones": [{"name": "x" * 65, "polygon": LEFT["polygon"]}]},
        {"type": "zones", "lines": [{**GATE, "a": [-0.1, 0]}]},
        {"type": "zones", "zones": [LEFT] * 65},
    ):
        with pytest.raises(ValidationError):
            ZonesRequest.model_validate(bad)


def test_only_configured_names_become_label_values() -> None:
    registry = new_registry()
    metrics = LiveMetrics(registry, zone_names=["door"])
    metrics.zone_event("door", "server", "zone_enter")
    metrics.zone_event("door", "peer", "zone_exit")  # a peer's zone that happens to share the name
    metrics.zone_event("anything a client sends", "peer", "line_cross", "in")
    text = generate_latest(registry).decode()
    zones = {
        line.split('zone="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("rtdetect_live_zone_events_total{")
    }
    assert zones == {"door", "peer"}
    assert 'rtdetect_live_zone_events_total{event="zone_enter",zone="door"} 1.0' in text
    assert 'rtdetect_live_zone_events_total{event="zone_exit",zone="peer"} 1.0' in text
    assert 'rtdetect_live_zone_events_total{event="line_cross_in",zone="peer"} 1.0' in text


def test_server_zones_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTDETECT_MEDIA_ZONES", '[{"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}]')
    monkeypatch.setenv("RTDETECT_MEDIA_LINES", '[{"name": "gate", "a": [0.5, 0], "b": [0.5, 1]}]')
    settings = Settings()
    assert [z.name for z in settings.zones] == ["door"] and [ln.name for ln in settings.lines] == ["gate"]
    monkeypatch.setenv("RTDETECT_MEDIA_LINES", '[{"name": "door", "a": [0.5, 0], "b": [0.5, 1]}]')
    with pytest.raises(ValidationError, match="unique"):
        Settings()
