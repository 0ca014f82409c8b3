"""The media server's live-video metrics, defined once, on a registry the caller owns.

The counters below are totals with no per-peer label: a label per peer on a long-lived counter would
keep a series for every peer that ever connected. Per-peer frame counts come from `PeerFramesCollector`,
read from the live peers at scrape time, so a peer's series exist exactly while it does (at most
`max_peers` of them) and nothing has to be removed on close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Receive -> send inside the server: sub-millisecond when healthy, up to a few frame intervals under load.
FRAME_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0)
# How far the drawn boxes lag the frame they are drawn on: about one inference time when healthy.
DETECTION_AGE_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)

DROP_STAGES = ("inference", "output")  # the label values of frames_dropped, bounded
# "rejected": the offer failed after the peer was created (e.g. no codec in common).
CLOSE_REASONS = ("client", "ice_failed", "timeout", "shutdown", "error", "rejected")
# The last four come from media_server/auth.py: no or a wrong key, not application/json, a foreign Origin,
# too many offers of one client not connected yet.
REJECT_REASONS = (
    "bad_offer",
    "too_large",
    "capacity",
    "not_ready",
    "unauthorized",
    "not_json",
    "forbidden_origin",
    "too_many_pending",
)


# Zone events' label values: each server-configured zone or line name, or this one for any peer's own
# (a client names its zones freely; its names never become label values).
PEER_ZONE = "peer"
ZONE_EVENTS = ("zone_enter", "zone_exit", "line_cross_in", "line_cross_out")


class LiveMetrics:
    def __init__(self, registry: CollectorRegistry, zone_names: Iterable[str] = ()) -> None:
        self._zone_names = frozenset(zone_names)
        self.active_peers = Gauge(
            "rtdetect_live_active_peers", "WebRTC peers currently connected or connecting.", registry=registry
        )
        self.peers_closed = Counter(
            "rtdetect_live_peers_closed_total",
            "WebRTC peers closed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.offers_rejected = Counter(
            "rtdetect_live_offers_rejected_total",
            "Offers refused before a peer was created, by reason.",
            ["reason"],
            registry=registry,
        )
        self.frames_in = Counter(
            "rtdetect_live_frames_in_total", "Decoded video frames received from peers.", registry=registry
        )
        self.frames_out = Counter(
            "rtdetect_live_frames_out_total",
            "Video frames handed to the encoders for peers.",
            registry=registry,
        )
        self.frames_inferred = Counter(
            "rtdetect_live_frames_inferred_total",
            "Received frames that went through the detector.",
            registry=registry,
        )
        self.frames_dropped = Counter(
            "rtdetect_live_frames_dropped_total",
            "Received frames dropped by backpressure: not inferred (stage=inference; the frame still goes "
            "back out) or not sent back (stage=output).",
            ["stage"],
            registry=registry,
        )
        self.inference_failures = Counter(
            "rtdetect_live_inference_failures_total",
            "Live frames whose detection failed, by error (overloaded, inference).",
            ["error"],
            registry=registry,
        )
        self.frame_latency = Histogram(
            "rtdetect_live_frame_latency_seconds",
            "Time from a decoded frame's arrival to its hand-off to the encoder.",
            buckets=FRAME_LATENCY_BUCKETS,
            registry=registry,
        )
        self.detection_age = Histogram(
            "rtdetect_live_detection_age_seconds",
            "Age of the detections drawn on an outgoing frame: its arrival minus the arrival of the frame "
            "they were computed on.",
            buckets=DETECTION_AGE_BUCKETS,
            registry=registry,
        )
        self.zone_events = Counter(
            "rtdetect_live_zone_events_total",
            "Zone and line events of tracked objects, by server-configured zone or line (every peer's own "
            'zones together as "peer") and event (zone_enter, zone_exit, line_cross_in, line_cross_out).',
            ["zone", "event"],
            registry=registry,
        )
        self.results_dropped = Counter(
            "rtdetect_live_results_dropped_total",
            "Data-channel messages (results, events) not sent because the peer was not reading its channel.",
            registry=registry,
        )
        self.tracks_started = Counter(
            "rtdetect_live_tracks_started_total",
            "Tracks that got an id (a new object, or one whose track was lost and found again).",
            registry=registry,
        )
        # Pre-create the bounded label values so dashboards see zeros instead of missing series.
        for zone in (*sorted(self._zone_names), PEER_ZONE):
            for event in ZONE_EVENTS:
                self.zone_events.labels(zone=zone, event=event)
        for stage in DROP_STAGES:
            self.frames_dropped.labels(stage=stage)
        for reason in CLOSE_REASONS:
            self.peers_closed.labels(reason=reason)
        for reason in REJECT_REASONS:
            self.offers_rejected.labels(reason=reason)
        for error in ("overloaded", "inference"):
            self.inference_failures.labels(error=error)

    def zone_event(self, name: str, source: str, event: str, direction: str | None = None) -> None:
        """Count one event; a peer's own zone, or a name the server was not configured with, is "peer"."""
        zone = name if source == "server" and name in self._zone_names else PEER_ZONE
        self.zone_events.labels(zone=zone, event=f"{event}_{direction}" if direction else event).inc()


PEER_DIRECTIONS = ("in", "out", "inferred")


class PeerFramesCollector(Collector):
    """`rtdetect_live_peer_frames_total{peer, direction}` from `peers()`: (peer id, stats) for each live peer.

    `stats` holds `frames_in`, `frames_out` and `frames_inferred`, counters that start at 0 with the peer.
    """

    def __init__(self, peers: Callable[[], Iterable[tuple[str, Mapping[str, int]]]]) -> None:
        self._peers = peers

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("rtdetect_live_peer_frames", "", labels=["peer", "direction"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "rtdetect_live_peer_frames",
            "Video frames of each live peer: received (in), sent back (out), run through the detector.",
            labels=["peer", "direction"],
        )
        for peer_id, stats in self._peers():
            for direction in PEER_DIRECTIONS:
                family.add_metric([peer_id, direction], stats[f"frames_{direction}"])
        yield family
