"""rtdetect's Streamlit UI: `streamlit run web/app.py --server.port 8501`.

The entry point: reads the settings (RTDETECT_UI_* environment variables) once per browser session, shows
them in the sidebar and runs the chosen page. The pages talk to the servers only; no model runs here.
"""

from __future__ import annotations

import streamlit as st
from pydantic import ValidationError

from rtc.jitter import install_marker_jitter_buffer
from web import live_page, upload_page
from web.ice import restrict_host_candidates
from web.settings import Settings

SETTINGS_KEY = "rtdetect_settings"


def session_settings() -> Settings:
    settings = st.session_state.get(SETTINGS_KEY)
    if not isinstance(settings, Settings):
        settings = Settings()
        st.session_state[SETTINGS_KEY] = settings
    return settings


def sidebar(settings: Settings) -> None:
    with st.sidebar:
        st.header("Backends")
        st.markdown(f"Detect API: `{settings.detect_api_url}`  \nMedia server: `{settings.media_server_url}`")
        st.caption(f"Request timeout {settings.request_timeout_s:g} s")
        st.caption("API key: set (sent to both servers)" if settings.api_key else "API key: none")
        st.header("WebRTC")
        if settings.ice_servers:
            st.markdown("\n".join(f"- `{s.redacted()}`" for s in settings.ice_servers))
        else:
            st.caption("No ICE servers configured (direct connections only; no public STUN).")
        if settings.use_media_server_ice:
            st.caption("Also uses the media server's ICE servers (GET /ice-servers), TURN included.")
        if settings.ice_host_addresses:
            st.caption("Host candidates: " + ", ".join(settings.ice_host_addresses))
        st.caption("Settings: RTDETECT_UI_* environment variables.")


def main() -> None:
    st.set_page_config(page_title="rtdetect", page_icon=":material/center_focus_strong:", layout="wide")
    try:
        settings = session_settings()
    except ValidationError as e:
        st.error(f"Invalid RTDETECT_UI_* settings:\n\n```\n{e}\n```")
        st.stop()
    # Process-wide (aioice has no per-connection option); idempotent, so every run may call it.
    restrict_host_candidates(settings.ice_host_addresses)
    # Both of the relay's WebRTC legs release video frames on the RTP marker bit (rtc/jitter.py).
    install_marker_jitter_buffer()
    sidebar(settings)
    page = st.navigation(
        [
            st.Page(
                lambda: upload_page.render(settings),
                title="Upload",
                icon=":material/image:",
                url_path="upload",
                default=True,
            ),
            st.Page(
                lambda: live_page.render(settings), title="Live", icon=":material/videocam:", url_path="live"
            ),
        ]
    )
    page.run()


main()
