"""The UI's settings: environment variables prefixed RTDETECT_UI_, read once per browser session by
`web/app.py` (the Streamlit entry point) and passed to the pages. Library code never reads the environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inference.envlist import EnvList
from rtc.ice import IceServer, parse_ice_servers


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTDETECT_UI_", extra="ignore", frozen=True)

    detect_api_url: str = "http://127.0.0.1:8000"
    media_server_url: str = "http://127.0.0.1:8080"
    # One /detect call on CPU takes tens of ms; a large photo on a busy host can take seconds.
    request_timeout_s: float = Field(default=15.0, gt=0.0)
    # The UI's own API key (`python -m inference.apikeys new`), sent as `Authorization: Bearer` on every call
    # to both servers when they run with auth on; its hash goes into their api_key_hashes.
    api_key: SecretStr | None = None
    api_key_file: Path | None = None  # or the key in a file (compose: a mounted secret); api_key wins

    # WebRTC. No public STUN by default: an explicit, possibly empty, list always reaches aiortc and the
    # browser (both fall back to a public STUN server when given none).
    ice_servers: Annotated[list[IceServer], NoDecode] = Field(default_factory=list)
    # Also use the media server's GET /ice-servers (where it hands out short-lived TURN credentials).
    use_media_server_ice: bool = True
    # Addresses this process's own WebRTC peers offer as host candidates. aioice leaves loopback out, so a
    # loopback-only deployment (tests) must name 127.0.0.1 here. Empty: aioice's interface discovery.
    ice_host_addresses: EnvList = Field(default_factory=list)
    # How long the relay waits for the media server to answer and connect before the live page gives up.
    live_connect_timeout_s: float = Field(default=15.0, gt=0.0)

    @model_validator(mode="after")
    def _read_key_file(self) -> Self:
        if self.api_key is None and self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read api_key_file {self.api_key_file}: {e.strerror}") from e
            # Frozen model: set the field once, here, where the settings are read.
            object.__setattr__(self, "api_key", SecretStr(key) if key else None)
        return self

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for both servers; empty without a key."""
        key = self.api_key.get_secret_value().strip() if self.api_key is not None else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    @field_validator("detect_api_url", "media_server_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _parse_ice_servers(cls, value: Any) -> Any:
        return parse_ice_servers(value)

    @field_validator("ice_host_addresses")
    @classmethod
    def _valid_addresses(cls, value: list[str]) -> list[str]:
        # aioice binds a UDP socket per address: a hostname or typo would only fail at the first START.
        return [str(ipaddress.ip_address(v)) for v in value]
