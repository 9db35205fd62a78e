"""`index.html` of a `valor parse` run: one self-contained page (inline CSS, SVG and JS; no external asset, no server,
no network). Per video: its player (a relative path to the file, or a copy beside the page) and its timeline, one row
per class with an audio and a visual lane, coloured as workflows.timeline; a red cursor follows playback, and a click
on an event seeks the video to its start. Failed videos are listed with their media error.

No data value (video name, path, reason, checkpoint) reaches markup or script unescaped: the page is one
`string.Template` substitution (a single pass: a value is never scanned for placeholders), text goes in HTML-escaped,
the player's src percent-encoded, and the timelines' data travels as one JSON payload in a
`<script type="application/json">` element, with `<`, `>` and `&` written as \\u escapes, read with `JSON.parse`.
"""
from __future__ import annotations

import html
import json
from string import Template
from urllib.parse import quote

from workflows.timeline import AUDIO, AV, VISUAL, event_classes

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>valor parse</title>
<style>
body{font-family:sans-serif;margin:16px;background:#fff;color:#222}
section{margin-bottom:28px} video{max-width:480px;display:block;background:#000}
svg{display:block;margin-top:6px} .event{cursor:pointer} .lane{fill:#f0f0f0}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
</style></head><body>
<h1>valor parse</h1>
<p class="key">checkpoint <code>$checkpoint</code><span style="background:$audio"></span>audio
<span style="background:$visual"></span>visual<span style="background:$av"></span>audio-visual</p>
$sections
$failures
<script type="application/json" id="valor-data">$data</script>
<script>
const PAGE = JSON.parse(document.getElementById("valor-data").textContent);
const DATA = PAGE.videos, COLOUR = PAGE.colours;
const NS = "http://www.w3.org/2000/svg", LEFT = 170, WIDTH = 900, ROW = 34, TOP = 8;
function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
DATA.forEach(function (v, i) {
  const svg = document.getElementById("timeline-" + i), video = document.getElementById("video-" + i);
  const rows = Math.max(1, v.classes.length), h = TOP + rows * ROW + 22;
  const x = function (t) { return LEFT + (WIDTH - LEFT - 10) * t / v.duration; };
  svg.setAttribute("width", WIDTH); svg.setAttribute("height", h);
  v.classes.forEach(function (name, r) {
    const y = TOP + r * ROW;
    el("text", {x: 4, y: y + 21, "font-size": 12}, svg).textContent = name;
    el("rect", {class: "lane", x: x(0), y: y + 2, width: x(v.duration) - x(0), height: 13}, svg);
    el("rect", {class: "lane", x: x(0), y: y + 17, width: x(v.duration) - x(0), height: 13}, svg);
  });
  v.events.forEach(function (e) {
    const r = v.classes.indexOf(e["class"]), y = TOP + r * ROW;
    const ys = e.modality === "audio" ? [y + 2] : e.modality === "visual" ? [y + 17] : [y + 2, y + 17];
    ys.forEach(function (yy) {
      const bar = el("rect", {class: "event", x: x(e.start), y: yy, width: Math.max(1, x(e.end) - x(e.start)),
                              height: 13, fill: COLOUR[e.modality], "data-start": e.start}, svg);
      el("title", {}, bar).textContent = e["class"] + " (" + e.modality + ") " + e.start + "-" + e.end +
        " s, confidence " + e.confidence;
      bar.addEventListener("click", function () { if (video) { video.currentTime = e.start; } });
    });
  });
  for (let t = 0; t <= v.duration + 1e-9; t += Math.max(1, Math.ceil(v.duration / 10))) {
    el("text", {x: x(t), y: h - 4, "font-size": 10, "text-anchor": "middle"}, svg).textContent = t + "s";
  }
  const cursor = el("line", {class: "cursor", x1: x(0), x2: x(0), y1: TOP, y2: TOP + rows * ROW,
                             stroke: "red", "stroke-width": 2}, svg);
  function place() {
    const t = video ? Math.min(video.currentTime, v.duration) : 0;
    cursor.setAttribute("x1", x(t)); cursor.setAttribute("x2", x(t));
  }
  function follow() { place(); if (video && !video.paused) requestAnimationFrame(follow); }
  if (video) {
    video.addEventListener("timeupdate", place); video.addEventListener("seeked", place);
    video.addEventListener("play", function () { requestAnimationFrame(follow); });
  }
});
</script></body></html>
""")


def script_json(value) -> str:
    """`value` as JSON that can sit inside a <script> element: `<`, `>` and `&` as \\u escapes (JSON.parse reads them
    back), so no string can end the element, open a comment or start a tag there."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(results: list[dict], videos: list[str], failures: list[dict], checkpoint: str) -> str:
    """The page for `results` (parse JSON dicts), `videos` (each one's src relative to the page) and `failures`."""
    sections, data = [], []
    for i, (r, src) in enumerate(zip(results, videos)):
        n = len(r["events"])
        sections.append(f'<section id="v{i}"><h2>{html.escape(r["video"])}</h2>'
                        f'<p>{r["duration"]:.2f} s, {r["segments"]} segments, {n} event(s)</p>'
                        f'<video id="video-{i}" controls preload="metadata" src="{html.escape(quote(src, safe="/"))}">'
                        f'</video><svg id="timeline-{i}" xmlns="http://www.w3.org/2000/svg"></svg></section>')
        data.append({"video": r["video"], "duration": r["duration"], "classes": event_classes(r["events"]),
                     "events": [{k: e[k] for k in ("class", "modality", "start", "end", "confidence")}
                                for e in r["events"]]})
    fail = ""
    if failures:
        rows = "".join(f"<tr><td>{html.escape(f['video'])}</td><td>{html.escape(f['kind'])}</td>"
                       f"<td>{html.escape(f['reason'])}</td></tr>" for f in failures)
        fail = f"<h2>failed</h2><table><tr><th>video</th><th>kind</th><th>reason</th></tr>{rows}</table>"
    colours = {"audio": AUDIO, "visual": VISUAL, "audio-visual": AV}
    return PAGE.substitute(checkpoint=html.escape(checkpoint), audio=AUDIO, visual=VISUAL, av=AV,
                           sections="\n".join(sections), failures=fail,
                           data=script_json({"videos": data, "colours": colours}))
