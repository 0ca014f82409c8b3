"""WebRTC plumbing shared by the media server and the UI's relay: ICE configuration and the host-address
override, the drop buffer, the marker-bit jitter buffer and the data-channel message schema.

Imports flow servers and tools -> rtc -> inference; nothing here imports a server, a web framework or
prometheus.
"""
