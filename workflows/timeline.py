"""The timeline picture of one parsed video (`valor parse`): like VALOR Fig. 5, one row per class that occurs, each
with an audio lane (top) and a visual lane (bottom); audio-only events are drawn in AUDIO, visual-only in VISUAL and
audio-visual events in AV in both lanes. The x axis is the video's time in seconds.
"""
from __future__ import annotations

import io

AUDIO, VISUAL, AV = "#1f77b4", "#ff7f0e", "#2ca02c"  # shared with workflows.parse_page
COLOURS = {"audio": AUDIO, "visual": VISUAL, "audio-visual": AV}


def event_classes(events: list[dict]) -> list[str]:
    """The classes that occur, in order of first appearance."""
    return list(dict.fromkeys(e["class"] for e in events))


def timeline_png(result: dict, dpi: int = 100) -> bytes:
    """PNG bytes of the timeline of a parse result (workflows.parse JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events, duration = result["events"], float(result["duration"])
    classes = event_classes(events)
    rows = max(1, len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 4 + duration * 0.25)), 1.0 + 0.55 * rows), dpi=dpi)
    try:
        for r, name in enumerate(classes):
            y = rows - 1 - r
            for lane, offset in (("audio", 0.5), ("visual", 0.08)):
                ax.broken_barh([(0, duration)], (y + offset, 0.38), facecolors="#f0f0f0", edgecolor="none")
                for e in events:
                    if e["class"] == name and e["modality"] in (lane, "audio-visual"):
                        ax.broken_barh([(e["start"], e["end"] - e["start"])], (y + offset, 0.38),
                                       facecolors=COLOURS[e["modality"]], edgecolor="none")
        ax.set_yticks([rows - 1 - r + 0.5 for r in range(len(classes))], classes)
        ax.set_ylim(0, rows)
        ax.set_xlim(0, duration)
        ax.set_xlabel("time (s)   [each row: audio lane above, visual lane below]")
        title = f"{result['video']}: {len(events)} event(s)" if events else f"{result['video']}: no events"
        ax.set_title(title, fontsize=10)
        ax.legend(handles=[Patch(color=AUDIO, label="audio"), Patch(color=VISUAL, label="visual"),
                           Patch(color=AV, label="audio-visual")], loc="upper right", fontsize=8, ncol=3,
                  bbox_to_anchor=(1.0, 1.0 + 0.5 / rows))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
