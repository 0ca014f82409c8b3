"""The live page: the browser's camera goes through the Streamlit server to the media server, which detects
and draws; the annotated video and its detections come back. See `web/relay.py` and docs/ui.md."""

from __future__ import annotations

import pandas as pd
import requests
import streamlit as st
from pydantic import ValidationError
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from rtc.ice import IceServer
from web.ice import aiortc_configuration, fetch_media_server_ice, merge_ice_servers, rtc_configuration_dict
from web.relay import LiveSnapshot, MediaServerRelay
from web.settings import Settings

RELAY_KEY = "live_relay"
# The camera resolution the media server's model and overlay are tuned for; the browser may still adapt.
CAMERA_CONSTRAINTS = {
    "video": {"width": {"ideal": 640}, "height": {"ideal": 480}, "frameRate": {"ideal": 30}},
    "audio": False,
}


@st.cache_data(ttl=60, show_spinner=False)
def _media_server_ice(
    media_server_url: str, timeout_s: float, headers: dict[str, str]
) -> list[dict[str, object]]:
    # Short-lived TURN credentials last far longer than this cache; errors raise and are not cached.
    # The headers (the API key) are part of the cache key, as on the upload page.
    return [s.model_dump() for s in fetch_media_server_ice(media_server_url, timeout_s, headers)]


def effective_ice_servers(settings: Settings) -> tuple[list[IceServer], str | None]:
    """The configured servers plus the media server's, and a warning when the latter are unavailable."""
    if not settings.use_media_server_ice:
        return list(settings.ice_servers), None
    try:
        # The page waits on this: keep it short, the media server answers from memory.
        raw = _media_server_ice(
            settings.media_server_url, min(settings.request_timeout_s, 3.0), settings.auth_headers()
        )
        fetched = [IceServer.model_validate(s) for s in raw]
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            return list(settings.ice_servers), (
                f"The media server at {settings.media_server_url} needs an API key"
                + (" and refused this one" if settings.api_key else "")
                + ": set RTDETECT_UI_API_KEY to a key whose hash it accepts."
            )
        return list(settings.ice_servers), f"The media server's ICE servers are unavailable: {e}"
    except (requests.RequestException, ValueError, ValidationError) as e:
        return list(settings.ice_servers), (
            f"Cannot reach the media server at {settings.media_server_url} ({type(e).__name__}). "
            "Is it running? (`make run` starts it; RTDETECT_UI_MEDIA_SERVER_URL points the UI elsewhere.)"
        )
    return merge_ice_servers(settings.ice_servers, fetched), None


def _session_relay(settings: Settings, ice_servers: list[IceServer], threshold: float) -> MediaServerRelay:
    """One relay per live session: streamlit-webrtc stops it when the stream ends, START makes a new one."""
    relay = st.session_state.get(RELAY_KEY)
    if not isinstance(relay, MediaServerRelay) or relay.closed:
        relay = MediaServerRelay(
            settings.media_server_url,
            aiortc_configuration(ice_servers),
            connect_timeout_s=settings.live_connect_timeout_s,
            score_threshold=threshold,
            headers=settings.auth_headers(),
        )
        st.session_state[RELAY_KEY] = relay
    return relay


def render(settings: Settings) -> None:
    st.title("Live detection")
    st.caption(
        "Your camera streams to the media server, which detects objects and sends the video back with the "
        "boxes drawn. Nothing runs in this page's server but the relay."
    )
    ice_servers, warning = effective_ice_servers(settings)
    if warning:
        st.warning(warning, icon=":material/cloud_off:")
    video_col, panel_col = st.columns([3, 2], gap="large")
    with panel_col:
        threshold = st.slider(
            "Score threshold", 0.05, 1.0, 0.35, 0.05, help="Applied by the media server to this stream, live."
        )
    relay = _session_relay(settings, ice_servers, threshold)
    relay.configure(threshold)
    rtc = rtc_configuration_dict(ice_servers)  # explicit, even when empty: no public STUN fallback
    with video_col:
        ctx = webrtc_streamer(
            key="live",
            mode=WebRtcMode.SENDRECV,
            server_rtc_configuration=rtc,
            frontend_rtc_configuration=rtc,
            media_stream_constraints=CAMERA_CONSTRAINTS,
            sink_video_track=relay,  # the camera goes to the relay...
            source_video_track=relay.output,  # ...and the media server's annotated video comes back
            sendback_audio=False,
            video_html_attrs={"autoPlay": True, "controls": False, "muted": True, "style": {"width": "100%"}},
        )
    with panel_col:
        _live_panel(ctx.state.playing)


@st.fragment(run_every=1.0)
def _live_panel(playing: bool) -> None:
    """Refreshed every second on its own, without rerunning (and renegotiating) the stream above."""
    relay = st.session_state.get(RELAY_KEY)
    if not playing or not isinstance(relay, MediaServerRelay):
        st.info("Press START to stream your camera to the media server.")
        return
    snap = relay.stats.snapshot()
    if snap.error:
        st.error(snap.error, icon=":material/cloud_off:")
    elif snap.state != "connected":
        st.info(f"Connecting to the media server ({snap.state})…")
    show_stats(snap)


def show_stats(snap: LiveSnapshot) -> None:
    rates, latency, other = st.columns(2), st.columns(2), st.columns(2)
    rates[0].metric(
        "Video FPS", f"{snap.returned_fps:.1f}", help="Annotated frames back from the media server"
    )
    rates[1].metric("Detections/s", f"{snap.detection_fps:.1f}", help="Detection results on the data channel")
    latency[0].metric(
        "Box latency", _ms(snap.age_ms), help="Media server: frame received -> its detections published"
    )
    latency[1].metric("Inference", _ms(snap.inference_ms), help="The engine's share of the box latency")
    other[0].metric("Round trip", _ms(snap.round_trip_ms), help="Data channel ping: relay <-> media server")
    other[1].metric("Skipped frames", snap.frames_dropped, help="Replaced by a newer frame at the relay")
    if not snap.detections:
        st.caption("No objects detected yet.")
        return
    size = ""
    if snap.last_message:
        size = f" in a {snap.last_message.get('width')}x{snap.last_message.get('height')} frame"
    st.caption(f"Latest detections{size}")
    # st.table, not st.dataframe: plain HTML, small, and readable by the browser test.
    st.table(live_table(snap))
    if snap.events:
        st.caption("Zone and line events")
        st.table(
            pd.DataFrame(
                [
                    {
                        "event": e.get("type"),
                        "name": e.get("name"),
                        "id": e.get("track_id"),
                        "label": e.get("label"),
                        "direction": e.get("direction", ""),
                    }
                    for e in reversed(snap.events)
                ]
            )
        )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def live_table(snap: LiveSnapshot) -> pd.DataFrame:
    rows = []
    for d in snap.detections:
        x1, y1, x2, y2 = (round(float(v)) for v in d.get("box", (0, 0, 0, 0)))
        rows.append(
            {
                "id": d.get("track_id", ""),
                "label": d.get("label"),
                "score": f"{float(d.get('score', 0)):.2f}",
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
            }
        )
    return pd.DataFrame(rows, columns=["id", "label", "score", "x1", "y1", "x2", "y2"])
