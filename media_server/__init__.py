"""The WebRTC media server: the browser's camera in, detections drawn on the video back out (aiohttp + aiortc)."""
