"""Moved to `rtc.ice` (WebRTC plumbing is not the model core). This alias stays only until every importer
has moved; new code imports `rtc.ice`."""

from rtc.ice import HostAddressOverride, IceServer, parse_ice_servers

__all__ = ["HostAddressOverride", "IceServer", "parse_ice_servers"]
