"""tools.live_bench writes only its own section of docs/benchmarks.md (no figures asserted: timing is not
behaviour)."""

from __future__ import annotations

from pathlib import Path

from tools.live_bench import BEGIN, END, ErrorRow, IdRow, RttRow, render, write_section


def test_the_report_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nsomeone else's table\n")
    rtt = [
        RttRow("VP8", "aiortc echo", 300, 30.0, 80.0, 95.0, 99.0, 80.0, 81.0, 1.2, 3.0),
        RttRow("VP8", "rtdetect", 300, 30.0, 50.0, 65.0, 70.0, 50.0, 50.5, 1.0, 3.0),
    ]
    errors = [
        ErrorRow("smooth", "acceleration", 0.0, 100.0, 133.0, 900, 99.0, 4.0, 10.0, 20.0, 2.0, 1.0, 25.0),
        ErrorRow("smooth", "velocity", 40.0, 167.0, 233.0, 900, 99.0, 6.0, 14.0, 30.0, 2.0, 1.0, 12.0),
    ]
    first = render(rtt, errors, IdRow(60, 600, 590, 0, [1, 2]), "a machine", "quiet")
    write_section(doc, first)
    assert "| smooth | 40 ms | constant velocity | 900 | 99 % | 167 ms | 233 ms | 6.0 px |" in doc.read_text()
    assert "| smooth | natural | constant acceleration | 900 |" in doc.read_text()
    assert "VP8: rtdetect's p50 is 30.0 ms below the bare aiortc echo's." in doc.read_text()
    assert "2.00 on the pipeline's executor + 1.00 through the batcher = 3.00" in doc.read_text()
    second = render([], [], None, "another machine", "busy")
    write_section(doc, second)
    text = doc.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "someone else's table" in text and "another machine" in text and "a machine." not in text


def test_the_probe_scene_sways_as_the_issue_specifies() -> None:
    """2 s period, 120 px amplitude about the centre: the ground truth the probe rows are measured against."""
    from tools.live_bench import MOTIONS, _motion

    assert "probe" in MOTIONS
    scene = _motion("probe")

    def centre_x(t: float) -> float:
        _, (box,) = scene.render(t)
        return (box[0] + box[2]) / 2

    assert abs(centre_x(0.5) - centre_x(0.0) - 120) <= 1  # a quarter period: the amplitude
    assert abs(centre_x(1.5) - centre_x(0.0) + 120) <= 1
    assert abs(centre_x(2.0) - centre_x(0.0)) <= 1  # the period
