"""The timeline picture of one parsed video (`valor parse`): like VALOR Fig. 5, one row per class that occurs, each
with an audio lane (top) and a visual lane (bottom); audio-only events are drawn in AUDIO, visual-only in VISUAL and
audio-visual events in AV in both lanes, each at the opacity of its confidence (and the number on it). The x axis is
the video's time in seconds. A lane the video does not have (no audio track, no usable frames) is hatched and named.
"""
from __future__ import annotations

import io

AUDIO, VISUAL, AV = "#1f77b4", "#ff7f0e", "#2ca02c"  # shared with workflows.parse_page
COLOURS = {"audio": AUDIO, "visual": VISUAL, "audio-visual": AV}


def event_classes(events: list[dict]) -> list[str]:
    """The classes that occur, in order of first appearance."""
    return list(dict.fromkeys(e["class"] for e in events))


def timeline_figure(result: dict, dpi: int = 100):
    """The matplotlib Figure of a parse result's timeline: bars at the opacity of their confidence, the confidence
    written on every bar wide enough to hold it, a missing lane (result["missing"]) hatched grey and named, the
    legend in a band of its own under the x axis label (never over the title or a lane)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events, duration, missing = result["events"], float(result["duration"]), result.get("missing") or {}
    classes = event_classes(events)
    rows = max(1, len(classes))
    width = max(6.0, min(16.0, 4 + duration * 0.25))
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.55 * rows), dpi=dpi)
    per_inch = (width * 0.8) / duration  # roughly: the axes span 80 % of the figure
    for r in range(rows):
        y = rows - 1 - r
        for lane, offset in (("audio", 0.5), ("visual", 0.08)):
            if lane in missing:
                ax.broken_barh([(0, duration)], (y + offset, 0.38), facecolors="#d9d9d9", edgecolor="#999999",
                               hatch="//")
                ax.text(duration / 2, y + offset + 0.19, missing[lane], ha="center", va="center", fontsize=8,
                        color="#444444")
                continue
            ax.broken_barh([(0, duration)], (y + offset, 0.38), facecolors="#f0f0f0", edgecolor="none")
            for e in (e for e in events if r < len(classes) and e["class"] == classes[r]
                      and e["modality"] in (lane, "audio-visual")):
                ax.broken_barh([(e["start"], e["end"] - e["start"])], (y + offset, 0.38), edgecolor="none",
                               facecolors=COLOURS[e["modality"]], alpha=float(e["confidence"]))
                if (e["end"] - e["start"]) * per_inch >= 0.32:
                    ax.text(e["start"] + 0.05 * duration / width, y + offset + 0.19, f"{e['confidence']:.2f}",
                            va="center", fontsize=7, color="#111111", gid="confidence")
    ax.set_yticks([rows - 1 - r + 0.5 for r in range(len(classes))], classes)
    ax.set_ylim(0, rows)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)   [each row: audio lane above, visual lane below; opacity and number = confidence]")
    title = f"{result['video']}: {len(events)} event(s)" if events else f"{result['video']}: no events"
    lacks = "; ".join(f"{why}" for why in missing.values())
    ax.set_title(title + (f" ({lacks})" if lacks else ""), fontsize=10)
    fig.legend(handles=[Patch(color=AUDIO, label="audio"), Patch(color=VISUAL, label="visual"),
                        Patch(color=AV, label="audio-visual")], loc="lower center", fontsize=8, ncol=3,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))  # the bottom band holds the legend
    return fig


def timeline_png(result: dict, dpi: int = 100) -> bytes:
    """PNG bytes of the timeline of a parse result (workflows.parse JSON)."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(result, dpi)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
