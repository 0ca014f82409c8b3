"""The media server's settings: read once in `__main__` (environment, prefix RTDETECT_MEDIA_), passed into
`create_app`. Library code never reads the environment."""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from inference.apikeys import ApiKeySettings
from inference.envlist import EnvList, split_list
from inference.settings import ServingSettings
from inference.types import DetectParams
from media_server.live_settings import LiveTrackingSettings  # tracking, box prediction, zones
from media_server.turn import validate_ice_url
from rtc.ice import IceServer, parse_ice_servers

_DEFAULTS = DetectParams()


class BackpressurePolicy(StrEnum):
    """What the per-peer reader does with frames that arrive while inference is busy.

    Every frame still goes back out to the peer; the policy only decides which frames get inferred.
    """

    LATEST = "latest"  # keep only the newest frame: lowest detection age, the default
    DROP_OLDEST = "drop_oldest"  # a small FIFO (`buffer_size`); when full, the oldest frame is dropped


class MediaAuthSettings(ApiKeySettings):
    """The media server's access settings (mixed into its Settings: RTDETECT_MEDIA_ prefix); media_server/auth.py
    enforces them. Here, not there, so that the settings import nothing of the server (no import circle)."""

    # Origins (scheme://host[:port]) whose pages may POST /offer besides the server's own, e.g. the HTTPS
    # front's public origin when it rewrites Host.
    allowed_origins: EnvList = Field(default_factory=list)
    # Offers being answered plus answered peers not connected yet, per client. A browser needs 1.
    max_pending_offers_per_client: int = Field(default=2, ge=1)
    # TURN credentials (GET /ice-servers, /config) per client: this many a minute, bursts of ice_rate_burst.
    ice_rate_per_min: float = Field(default=60.0, gt=0.0)
    ice_rate_burst: int = Field(default=20, ge=1)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            parts = urlsplit(origin.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://host[:port]")
            out.append(f"{parts.scheme}://{parts.netloc.lower()}")
        return out


class Settings(ServingSettings, MediaAuthSettings, LiveTrackingSettings):
    model_config = SettingsConfigDict(env_prefix="RTDETECT_MEDIA_", extra="ignore", frozen=True)

    # Model, engine and batching: inherited from ServingSettings, the same knobs as the detect API.

    # HTTP. Docker sets RTDETECT_MEDIA_HOST=0.0.0.0; a developer's machine only listens locally by default.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    # WebRTC. No public STUN by default: an explicit, possibly empty, list always reaches aiortc.
    ice_servers: Annotated[list[IceServer], NoDecode] = Field(default_factory=list)
    # Addresses offered as host ICE candidates (loopback in tests, the container's address behind a NAT).
    # Empty: aioice's own interface discovery, which leaves loopback out.
    ice_host_addresses: EnvList = Field(default_factory=list)
    # 1:1 NAT: host candidates bound on a private address are announced as the public one
    # ("10.0.0.5=203.0.113.7,..." or JSON).
    ice_announced_addresses: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # TURN with short-lived credentials (media_server/turn.py, coturn's use-auth-secret): browsers get
    # `turn_urls` from GET /ice-servers; the server's own peers use `turn_server_urls` (coturn as the server
    # reaches it, e.g. inside a compose network). Both need `turn_secret`.
    turn_urls: EnvList = Field(default_factory=list)
    turn_server_urls: EnvList = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    turn_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    codec: Literal["auto", "VP8", "H264"] = "auto"  # "auto": the browser's preference

    # Limits and lifecycle.
    max_peers: int = Field(default=4, ge=1)
    max_offer_bytes: int = Field(default=64 * 1024, ge=1024)
    retry_after_s: int = Field(default=5, ge=1)
    # Replicas (media_server/fleet.py): the replicas' base URLs as this one reaches them (itself may be
    # listed). Set, GET /room admits new peers only while no other replica with room holds fewer peers.
    fleet: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fleet_timeout_s: float = Field(default=0.5, gt=0.0)  # per GET /load of another replica
    fleet_cache_s: float = Field(default=0.2, ge=0.0)  # one round of reads serves this long
    # A peer that is not connected this long after its answer, or sends no frame for this long, is closed.
    disconnect_timeout_s: float = Field(default=10.0, gt=0.0)
    # Remote ICE candidates kept per media section of an offer; the rest are dropped before ICE checks them
    # (an offer naming hundreds of addresses would otherwise make the server send STUN to all of them).
    max_remote_candidates: int = Field(default=32, ge=1, le=1000)

    # HTTP read deadlines and connection limits (media_server/http_limits.py).
    header_timeout_s: float = Field(default=10.0, gt=0.0)  # the first request's headers, from connect
    body_timeout_s: float = Field(default=10.0, gt=0.0)  # the whole /offer body, from its headers
    keepalive_timeout_s: float = Field(
        default=30.0, gt=0.0
    )  # idle (or next headers) on a kept-alive connection
    max_connections: int = Field(default=256, ge=1)  # open HTTP connections; more are closed at once
    backlog: int = Field(default=128, ge=1)  # the listen queue
    # Repeated failures (accept errors, malformed requests, engine errors): one log line per interval per kind.
    error_log_interval_s: float = Field(default=10.0, gt=0.0)

    # The live pipeline.
    backpressure: BackpressurePolicy = BackpressurePolicy.LATEST
    buffer_size: int = Field(default=2, ge=1, le=30)  # drop_oldest only
    score_threshold: float = Field(default=_DEFAULTS.score_threshold, ge=0.0, le=1.0)
    # Boxes older than this (relative to the frame they would be drawn on) are not drawn: a stalled
    # engine must not leave stale boxes frozen over live video.
    max_detection_age_ms: float = Field(default=1000.0, gt=0.0)

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _parse_ice_servers(cls, value: Any) -> Any:
        return parse_ice_servers(value)

    @field_validator("turn_urls", "turn_server_urls")
    @classmethod
    def _turn_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not validate_ice_url(url).startswith("turn"):
                raise ValueError(f"TURN URLs must start with turn: or turns:, got {url!r}")
        return value

    @field_validator("fleet", mode="before")
    @classmethod
    def _parse_fleet(cls, value: Any) -> Any:
        # Space- or comma-separated, like the front's FRONT_MEDIA_UPSTREAMS; or JSON.
        if isinstance(value, str) and not value.strip().startswith("["):
            return value.replace(",", " ").split()
        return split_list(value)

    @field_validator("fleet")
    @classmethod
    def _fleet_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"fleet entries are base URLs (http://host:port), got {url!r}")
        return value

    @field_validator("ice_announced_addresses", mode="before")
    @classmethod
    def _parse_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected PRIVATE=PUBLIC pairs separated by commas")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @field_validator("ice_announced_addresses")
    @classmethod
    def _valid_mapping(cls, value: dict[str, str]) -> dict[str, str]:
        return {str(ipaddress.ip_address(k)): str(ipaddress.ip_address(v)) for k, v in value.items()}

    @field_validator("ice_host_addresses")
    @classmethod
    def _valid_addresses(cls, value: list[str]) -> list[str]:
        # aioice binds a UDP socket per address: a hostname or typo would only fail at the first offer.
        return [str(ipaddress.ip_address(v)) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for server in self.ice_servers:
            for url in server.urls:
                validate_ice_url(url)
        if (self.turn_urls or self.turn_server_urls) and self.turn_secret is None:
            raise ValueError("TURN URLs are configured but no turn_secret: coturn would refuse every peer")
        return self
