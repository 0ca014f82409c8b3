// rtdetect live client: camera -> WebRTC -> server (detection) -> annotated video + detections back.
// Plain script, no build step. `window.rtdetect` exposes the live state for tests and curious users.
"use strict";

(() => {
  const WIDTH = 640;
  const HEIGHT = 480;
  const FPS = 30;
  // The frame-number strip: the same layout as media_server/synthetic.py (16 bits, then inverted).
  const BITS = 16;
  const STRIP = 2 * Math.max(8, (HEIGHT / 20) & ~1);
  const ROW = STRIP / 2;

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), codec: $("codec"), threshold: $("threshold"),
    thresholdValue: $("threshold-value"), stamp: $("stamp"), local: $("local"), remote: $("remote"),
    status: $("status"), error: $("error"), detections: $("detections"),
    fpsSent: $("fps-sent"), fpsReceived: $("fps-received"), rtt: $("rtt"), inference: $("inference"),
    age: $("age"), count: $("count"), dropped: $("dropped"),
    auth: $("auth"), apiKey: $("api-key"), authMessage: $("auth-message"), authCancel: $("auth-cancel"),
    canvas: $("zones"), drawMode: $("draw-mode"), zoneClose: $("zone-close"), zonesClear: $("zones-clear"),
    events: $("events"),
  };
  const MAX_EVENTS = 50;

  const state = {
    status: "idle",
    peerId: null,
    framesSent: 0,
    framesDecoded: 0,
    framesPresented: 0,
    fpsSent: 0,
    fpsReceived: 0,
    results: 0,
    lastResult: null,
    rttMs: [], // recent round trips measured from stamped frame numbers
    error: null,
    keyRequested: false, // the server asked for an API key (tests read this)
    // This stream's zones and lines, normalised [0, 1] coordinates (the data channel's "zones" message).
    zones: [],
    lines: [],
    draft: [], // corners of the zone being drawn
    zonesAccepted: null, // the server's answer to the last "zones" message
    events: [], // zone_enter / zone_exit / line_cross, newest last
  };
  window.rtdetect = state;

  let pc = null;
  let channel = null;
  let camera = null;
  let statsTimer = null;
  let stopStamping = null;
  let stopReading = null;
  let config = { iceServers: [], scoreThreshold: 0.35, codec: "auto" };

  function setStatus(text) {
    state.status = text;
    ui.status.textContent = text;
    ui.status.dataset.state = text;
  }

  function showError(message) {
    state.error = message;
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  // --- API key: asked for once when the server answers 401, kept for this tab (sessionStorage) ---------

  const KEY_STORAGE = "rtdetect.apiKey";
  let keyPrompt = null; // one pending prompt, shared by concurrent requests

  function askForKey(message) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve) => {
        state.keyRequested = true;
        ui.authMessage.textContent = message;
        ui.auth.hidden = false;
        ui.apiKey.value = "";
        ui.apiKey.focus();
        const done = (key) => {
          ui.auth.hidden = true;
          ui.auth.removeEventListener("submit", submit);
          ui.authCancel.removeEventListener("click", cancel);
          keyPrompt = null;
          resolve(key);
        };
        const submit = (event) => { event.preventDefault(); done(ui.apiKey.value.trim() || null); };
        const cancel = () => done(null);
        ui.auth.addEventListener("submit", submit);
        ui.authCancel.addEventListener("click", cancel);
      });
    }
    return keyPrompt;
  }

  // fetch with `Authorization: Bearer <key>` once a key is known; on a 401 it asks for the key and retries.
  async function authFetch(url, options = {}) {
    for (;;) {
      const key = sessionStorage.getItem(KEY_STORAGE);
      const headers = { ...(options.headers || {}) };
      if (key) headers.Authorization = `Bearer ${key}`;
      const response = await fetch(url, { ...options, headers });
      if (response.status !== 401) return response;
      sessionStorage.removeItem(KEY_STORAGE);
      const entered = await askForKey(key ? "That key was not accepted; enter another." : "This server needs an API key.");
      if (!entered) return response; // cancelled: the caller shows the 401
      sessionStorage.setItem(KEY_STORAGE, entered);
    }
  }

  async function loadConfig() {
    // Relative URLs (no leading /): the page also runs under a path prefix behind the HTTPS front (/live/).
    const response = await authFetch("config");
    if (!response.ok) throw new Error(`GET /config: ${response.status}`);
    config = await response.json();
    ui.threshold.value = config.scoreThreshold;
    ui.thresholdValue.textContent = Number(config.scoreThreshold).toFixed(2);
    if (config.codec === "VP8" || config.codec === "H264") ui.codec.value = config.codec;
  }

  // --- frame-number stamping (sender) and reading (receiver) ---------------------------------------------

  const sentAt = new Map(); // frame number -> performance.now() when drawn

  function stampedTrack(video) {
    // Camera frames are redrawn on a canvas with the number strip; the canvas is what gets sent.
    const canvas = document.createElement("canvas");
    canvas.width = WIDTH;
    canvas.height = HEIGHT;
    const ctx = canvas.getContext("2d");
    const stream = canvas.captureStream(0);
    const track = stream.getVideoTracks()[0];
    let n = 0;
    let running = true;
    const draw = () => {
      ctx.drawImage(video, 0, 0, WIDTH, HEIGHT);
      const number = n % 65536;
      for (let bit = 0; bit < BITS; bit++) {
        const one = (number >> (BITS - 1 - bit)) & 1;
        const x0 = Math.floor((bit * WIDTH) / BITS);
        const x1 = Math.floor(((bit + 1) * WIDTH) / BITS);
        ctx.fillStyle = one ? "#fff" : "#000";
        ctx.fillRect(x0, HEIGHT - STRIP, x1 - x0, ROW);
        ctx.fillStyle = one ? "#000" : "#fff";
        ctx.fillRect(x0, HEIGHT - ROW, x1 - x0, ROW);
      }
      sentAt.set(number, performance.now());
      sentAt.delete((number + 1) % 65536);
      track.requestFrame();
      n += 1;
    };
    let timer = null;
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      // One sent frame per camera frame.
      const onFrame = () => {
        if (!running) return;
        draw();
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    } else {
      timer = setInterval(draw, 1000 / FPS);
    }
    stopStamping = () => {
      running = false;
      if (timer) clearInterval(timer);
      track.stop();
    };
    return track;
  }

  function readNumbers(video) {
    // Reads the strip of each presented frame and matches it with the time it was stamped.
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    let running = true;
    const onFrame = () => {
      if (!running) return;
      state.framesPresented += 1;
      const w = video.videoWidth;
      const h = video.videoHeight;
      if (w && h) {
        const strip = 2 * Math.max(8, (h / 20) & ~1);
        const row = strip / 2;
        canvas.width = w;
        canvas.height = strip;
        ctx.drawImage(video, 0, h - strip, w, strip, 0, 0, w, strip);
        const pixels = ctx.getImageData(0, 0, w, strip).data;
        const number = decodeStrip(pixels, w, row);
        if (number !== null && sentAt.has(number)) {
          state.rttMs.push(performance.now() - sentAt.get(number));
          if (state.rttMs.length > 90) state.rttMs.shift();
        }
      }
      video.requestVideoFrameCallback(onFrame);
    };
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onFrame);
    stopReading = () => { running = false; };
  }

  function decodeStrip(pixels, width, row) {
    const mean = (x0, x1, y0, y1) => {
      let sum = 0;
      let count = 0;
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          const i = (y * width + x) * 4;
          sum += 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
          count += 1;
        }
      }
      return sum / count;
    };
    let number = 0;
    for (let bit = 0; bit < BITS; bit++) {
      const x0 = Math.floor((bit * width) / BITS);
      const x1 = Math.floor(((bit + 1) * width) / BITS);
      const dx = Math.floor((x1 - x0) / 4);
      const dy = Math.floor(row / 4);
      const hi = mean(x0 + dx, x1 - dx, dy, row - dy);
      const lo = mean(x0 + dx, x1 - dx, row + dy, 2 * row - dy);
      if (Math.abs(hi - lo) < 60) return null;
      number = (number << 1) | (hi > lo ? 1 : 0);
    }
    return number;
  }

  // --- detections from the data channel ---------------------------------------------------------------

  function onMessage(event) {
    const message = JSON.parse(event.data);
    if (message.type === "detections") {
      state.results += 1;
      state.lastResult = message;
      renderResult(message);
    } else if (message.type === "events") {
      state.events.push(...message.events);
      state.events.splice(0, Math.max(0, state.events.length - MAX_EVENTS));
      renderEvents();
    } else if (message.type === "zones") {
      state.zonesAccepted = message;
    } else if (message.type === "error") {
      showError(`server: ${message.detail}`);
    }
  }

  function renderEvents() {
    const items = state.events.slice().reverse().map((e) => {
      const li = document.createElement("li");
      const what = e.type === "line_cross" ? `crossed ${e.name} (${e.direction})` : `${e.type === "zone_enter" ? "entered" : "left"} ${e.name}`;
      li.textContent = `${e.label} ${e.track_id} ${what}`;
      return li;
    });
    ui.events.replaceChildren(...items);
  }

  // --- zones and lines, drawn on the video ---------------------------------------------------------

  function pointOf(event) {
    const rect = ui.canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
  }

  function drawZones() {
    const ctx = ui.canvas.getContext("2d");
    const { width, height } = ui.canvas;
    ctx.clearRect(0, 0, width, height);
    ctx.lineWidth = 2;
    ctx.font = "14px system-ui, sans-serif";
    const path = (points) => {
      ctx.beginPath();
      points.forEach(([x, y], i) => (i ? ctx.lineTo(x * width, y * height) : ctx.moveTo(x * width, y * height)));
    };
    ctx.strokeStyle = ctx.fillStyle = "#4cc38a";
    for (const zone of state.zones) {
      path(zone.polygon);
      ctx.closePath();
      ctx.stroke();
      ctx.fillText(zone.name, zone.polygon[0][0] * width + 4, zone.polygon[0][1] * height + 16);
    }
    ctx.strokeStyle = ctx.fillStyle = "#f5a524";
    for (const line of state.lines) {
      path([line.a, line.b]);
      ctx.stroke();
      ctx.fillText(line.name, line.a[0] * width + 4, line.a[1] * height + 16);
    }
    if (state.draft.length) {
      ctx.strokeStyle = ctx.fillStyle = "#ffffff";
      path(state.draft);
      ctx.stroke();
      for (const [x, y] of state.draft) ctx.fillRect(x * width - 3, y * height - 3, 6, 6);
    }
  }

  function sendZones() {
    drawZones();
    if (channel && channel.readyState === "open") {
      channel.send(JSON.stringify({ type: "zones", zones: state.zones, lines: state.lines }));
    }
  }

  function closeZone() {
    if (state.draft.length < 3) return;
    state.zones.push({ name: `zone ${state.zones.length + 1}`, polygon: state.draft });
    state.draft = [];
    sendZones();
  }

  ui.canvas.addEventListener("click", (event) => {
    state.draft.push(pointOf(event));
    if (ui.drawMode.value === "line" && state.draft.length === 2) {
      const [a, b] = state.draft;
      state.lines.push({ name: `line ${state.lines.length + 1}`, a, b });
      state.draft = [];
      sendZones();
      return;
    }
    drawZones();
  });
  ui.canvas.addEventListener("dblclick", closeZone);
  ui.zoneClose.addEventListener("click", closeZone);
  ui.zonesClear.addEventListener("click", () => {
    state.zones = [];
    state.lines = [];
    state.draft = [];
    sendZones();
  });
  ui.drawMode.addEventListener("change", () => {
    state.draft = [];
    drawZones();
  });

  function renderResult(message) {
    ui.inference.textContent = `${message.inference_ms.toFixed(1)} ms`;
    ui.age.textContent = `${message.age_ms.toFixed(0)} ms`;
    ui.count.textContent = String(message.detections.length);
    ui.dropped.textContent = `${message.frames_dropped} of ${message.frames_in}`;
    const rows = message.detections.map((d) => {
      const tr = document.createElement("tr");
      const id = d.track_id === undefined ? "" : String(d.track_id);
      for (const text of [d.label, d.score.toFixed(2), d.box.map((v) => v.toFixed(0)).join(", "), id]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    });
    ui.detections.replaceChildren(...rows);
  }

  function sendThreshold() {
    const value = Number(ui.threshold.value);
    ui.thresholdValue.textContent = value.toFixed(2);
    if (channel && channel.readyState === "open") {
      channel.send(JSON.stringify({ type: "config", score_threshold: value }));
    }
  }

  // --- figures from WebRTC stats ----------------------------------------------------------------------

  let previous = null;
  async function updateStats() {
    if (!pc) return;
    const report = await pc.getStats();
    const now = performance.now();
    let sent = 0;
    let decoded = 0;
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") sent = s.framesSent || 0;
      if (s.type === "inbound-rtp" && s.kind === "video") decoded = s.framesDecoded || 0;
    });
    state.framesSent = sent;
    state.framesDecoded = decoded;
    if (previous) {
      const dt = (now - previous.time) / 1000;
      state.fpsSent = (sent - previous.sent) / dt;
      state.fpsReceived = (decoded - previous.decoded) / dt;
      ui.fpsSent.textContent = state.fpsSent.toFixed(1);
      ui.fpsReceived.textContent = state.fpsReceived.toFixed(1);
    }
    previous = { time: now, sent, decoded };
    if (state.rttMs.length) {
      const sorted = [...state.rttMs].sort((a, b) => a - b);
      const p50 = sorted[Math.floor(sorted.length / 2)];
      const p95 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))];
      ui.rtt.textContent = `${p50.toFixed(0)} ms (p95 ${p95.toFixed(0)})`;
    } else if (!ui.stamp.checked) {
      ui.rtt.textContent = "off";
    }
  }

  // --- start / stop -----------------------------------------------------------------------------------

  function preferCodec(transceiver, name) {
    if (!RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
    const codecs = RTCRtpSender.getCapabilities("video").codecs;
    const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${name.toLowerCase()}`);
    const rest = codecs.filter((c) => !wanted.includes(c));
    if (wanted.length) transceiver.setCodecPreferences([...wanted, ...rest]);
  }

  function waitForIceGathering(connection) {
    // The server answers once with all its candidates; do the same with ours (no trickle).
    if (connection.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (connection.iceGatheringState === "complete") {
          connection.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      connection.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000); // a slow STUN/TURN server must not block the start forever
    });
  }

  async function start() {
    showError("");
    ui.start.disabled = true;
    ui.codec.disabled = true;
    setStatus("starting");
    try {
      await loadConfig();
      camera = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: WIDTH }, height: { ideal: HEIGHT }, frameRate: { ideal: FPS } },
        audio: false,
      });
      ui.local.srcObject = camera;
      await ui.local.play().catch(() => {});
      const cameraTrack = camera.getVideoTracks()[0];
      const outgoing = ui.stamp.checked ? stampedTrack(ui.local) : cameraTrack;

      pc = new RTCPeerConnection({ iceServers: config.iceServers });
      pc.addEventListener("connectionstatechange", () => {
        setStatus(pc.connectionState);
        if (pc.connectionState === "failed") showError("connection failed");
      });
      pc.addEventListener("track", (event) => {
        ui.remote.srcObject = event.streams[0] || new MediaStream([event.track]);
        ui.remote.play().catch(() => {});
        readNumbers(ui.remote);
      });
      const transceiver = pc.addTransceiver(outgoing, { direction: "sendrecv" });
      preferCodec(transceiver, ui.codec.value);
      channel = pc.createDataChannel("detections");
      channel.addEventListener("message", onMessage);
      channel.addEventListener("open", () => {
        sendThreshold();
        if (state.zones.length || state.lines.length) sendZones();
      });

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const response = await authFetch("offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
      });
      const body = await response.json();
      if (!response.ok) {
        const retry = response.headers.get("Retry-After");
        throw new Error(`${body.error}: ${body.detail}${retry ? ` (retry in ${retry} s)` : ""}`);
      }
      state.peerId = body.peer_id;
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
      statsTimer = setInterval(updateStats, 1000);
      ui.stop.disabled = false;
    } catch (err) {
      showError(String(err.message || err));
      await stop();
    }
  }

  async function stop() {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    previous = null;
    if (stopStamping) stopStamping();
    if (stopReading) stopReading();
    stopStamping = stopReading = null;
    if (channel) channel.close();
    if (pc) pc.close();
    if (camera) camera.getTracks().forEach((t) => t.stop());
    channel = pc = camera = null;
    ui.local.srcObject = null;
    ui.remote.srcObject = null;
    sentAt.clear();
    state.rttMs = [];
    setStatus("idle");
    ui.start.disabled = false;
    ui.codec.disabled = false;
    ui.stop.disabled = true;
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.threshold.addEventListener("input", sendThreshold);
  window.addEventListener("pagehide", stop);
  loadConfig().catch((err) => showError(String(err.message || err)));
})();
