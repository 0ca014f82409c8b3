"""rtdetect's Streamlit UI: an upload page (detect API) and a live camera page (media server).

The UI never runs a model: it talks to the servers over HTTP and WebRTC only.
"""
