"""`index.html` of a `valor parse` run: one self-contained page (inline CSS, SVG and JS; no external asset, no server,
no network). An index (name, duration, events, lanes) when there are several videos. Per video: its player (a
relative path to the file, or a copy beside the page) beside its timeline -- one row per class, an audio and a visual
lane each, labelled, bars coloured as workflows.timeline at the opacity of their confidence (and the number on bars
wide enough), ticks every second (5 s past 30 s), a lane the video lacks greyed and named; under it a sortable event
table and the per-segment probabilities as a heat map (class x time, per modality; on the timeline's time axis).
Ground truth (--gt) is drawn as dashed outlines on the timeline and outlined cells on the heat map. A red cursor
follows playback; a click on an event (bar or table row) seeks the video to its start. Failed videos are listed with
their media error.

No data value (video name, path, reason, checkpoint) reaches markup or script unescaped: the page is one
`string.Template` substitution (a single pass: a value is never scanned for placeholders), text goes in HTML-escaped,
the player's src percent-encoded, and the timelines' data travels as one JSON payload in a
`<script type="application/json">` element, with `<`, `>` and `&` written as \\u escapes, read with `JSON.parse`.
"""
from __future__ import annotations

import html
import json
from string import Template
from typing import Optional
from urllib.parse import quote

from valor_core.classes import CLASSES
from workflows.timeline import AUDIO, AV, VISUAL, event_classes

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>valor parse</title>
<style>
body{font-family:sans-serif;margin:16px;background:#fff;color:#222}
section{margin-bottom:28px} .row{display:flex;gap:12px;align-items:flex-start}
video{width:300px;flex:none;display:block;background:#000}
svg{display:block} .event{cursor:pointer} .lane{fill:#f0f0f0} .missing{fill:#d9d9d9}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.key span.gt{background:none;border:1.5px dashed #000}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
table.events th{cursor:pointer;background:#f4f4f4} table.events tr{cursor:pointer}
</style></head><body>
<h1>valor parse</h1>
<p class="key">checkpoint <code>$checkpoint</code><span style="background:$audio"></span>audio
<span style="background:$visual"></span>visual<span style="background:$av"></span>audio-visual$gtkey
&nbsp; bar opacity and number, heat-map shade = probability / confidence</p>
$index
$sections
$failures
<script type="application/json" id="valor-data">$data</script>
<script>
const PAGE = JSON.parse(document.getElementById("valor-data").textContent);
const DATA = PAGE.videos, COLOUR = PAGE.colours, CLASSES = PAGE.classes;
const NS = "http://www.w3.org/2000/svg", LEFT = 190, WIDTH = 650, ROW = 34, TOP = 8, CELL = 8;
const LANES = [["audio", 2], ["visual", 17]];
function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function timeline(v, svg, video, x) {
  const names = v.classes.length ? v.classes : ["(no events)"];
  const h = TOP + names.length * ROW + 24;
  svg.setAttribute("width", WIDTH); svg.setAttribute("height", h);
  names.forEach(function (name, r) {
    const y = TOP + r * ROW;
    el("text", {class: "class-label", x: 4, y: y + 21, "font-size": 12}, svg, name);
    LANES.forEach(function (l) {
      el("text", {class: "lane-label", x: LEFT - 6, y: y + l[1] + 10, "font-size": 9, "text-anchor": "end",
                  fill: "#666"}, svg, l[0]);
      const why = v.missing[l[0]];
      el("rect", {class: why ? "missing" : "lane", x: x(0), y: y + l[1], width: x(v.duration) - x(0), height: 13},
         svg);
      if (why) el("text", {class: "missing-label", x: (x(0) + x(v.duration)) / 2, y: y + l[1] + 10, "font-size": 10,
                           "text-anchor": "middle", fill: "#444"}, svg, why);
    });
  });
  v.events.forEach(function (e) {
    const y = TOP + v.classes.indexOf(e["class"]) * ROW;
    LANES.forEach(function (l) {
      if (e.modality !== l[0] && e.modality !== "audio-visual") return;
      const w = Math.max(1, x(e.end) - x(e.start));
      const bar = el("rect", {class: "event", x: x(e.start), y: y + l[1], width: w, height: 13,
                              fill: COLOUR[e.modality], "fill-opacity": e.confidence, "data-start": e.start,
                              "data-confidence": e.confidence}, svg);
      el("title", {}, bar, e["class"] + " (" + e.modality + ") " + e.start + "-" + e.end + " s, confidence " +
         e.confidence);
      bar.addEventListener("click", function () { if (video) { video.currentTime = e.start; } });
      if (w >= 40) el("text", {class: "conf", x: x(e.start) + 3, y: y + l[1] + 10, "font-size": 9,
                               "pointer-events": "none"}, svg, e.confidence.toFixed(2));
    });
  });
  if (v.gt) LANES.forEach(function (l) {
    (v.gt[l[0]] || []).forEach(function (g) {
      const r = v.classes.indexOf(g[0]);
      el("rect", {class: "gt", x: x(g[1]), y: TOP + r * ROW + l[1], width: Math.max(1, x(g[2]) - x(g[1])),
                  height: 13, fill: "none", stroke: "#000", "stroke-width": 1.5, "stroke-dasharray": "4 2",
                  "pointer-events": "none"}, svg);
    });
  });
  const step = v.duration > 30 ? 5 : 1, bottom = TOP + names.length * ROW;
  for (let t = 0; t <= v.duration + 1e-9; t += step) {
    el("line", {class: "tick", x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4, stroke: "#888"}, svg);
    el("text", {class: "tick-label", x: x(t), y: h - 4, "font-size": 10, "text-anchor": "middle"}, svg, t + "s");
  }
  return el("line", {class: "cursor", x1: x(0), x2: x(0), y1: TOP, y2: bottom, stroke: "red", "stroke-width": 2},
            svg);
}
function heatmap(v, svg, x) {
  const block = 16 + CLASSES.length * CELL + 10, n = v.segments;
  const edge = function (j) { return Math.min(j * v.segment_seconds, v.duration); };
  svg.setAttribute("width", WIDTH); svg.setAttribute("height", 2 * block);
  LANES.forEach(function (l, m) {
    const top = m * block, p = v.prob[l[0]], why = v.missing[l[0]];
    el("text", {class: "heat-title", x: 4, y: top + 11, "font-size": 11, "font-weight": "bold"}, svg,
       l[0] + ": probability per class and segment");
    if (why) {
      el("rect", {class: "missing", x: x(0), y: top + 16, width: x(v.duration) - x(0), height: CLASSES.length * CELL},
         svg);
      el("text", {class: "missing-label", x: (x(0) + x(v.duration)) / 2, y: top + 16 + CLASSES.length * CELL / 2,
                  "font-size": 12, "text-anchor": "middle", fill: "#444"}, svg, why);
      return;
    }
    el("rect", {x: x(0), y: top + 16, width: x(v.duration) - x(0), height: CLASSES.length * CELL, fill: "#fafafa"},
       svg);
    const truth = v.gt && v.gt[l[0]] ? v.gt[l[0]] : [];
    CLASSES.forEach(function (name, c) {
      const y = top + 16 + c * CELL;
      el("text", {class: "heat-label", x: LEFT - 6, y: y + CELL - 1, "font-size": 7, "text-anchor": "end"}, svg,
         name);
      for (let j = 0; j < n; j++) {
        const cell = el("rect", {class: "heat", x: x(edge(j)), y: y, width: Math.max(1, x(edge(j + 1)) - x(edge(j))),
                                 height: CELL, fill: COLOUR[l[0]], "fill-opacity": p[j][c], "data-p": p[j][c]}, svg);
        el("title", {}, cell, name + " (" + l[0] + ") " + edge(j) + "-" + edge(j + 1) + " s: " + p[j][c]);
        if (truth.some(function (g) { return g[0] === name && g[1] < edge(j + 1) && g[2] > edge(j); }))
          el("rect", {class: "gt-cell", x: x(edge(j)), y: y, width: Math.max(1, x(edge(j + 1)) - x(edge(j))),
                      height: CELL, fill: "none", stroke: "#000", "stroke-width": 1}, svg);
      }
    });
  });
}
function table(v, tab, video) {
  const body = tab.tBodies[0], keys = ["class", "modality", "start", "end", "confidence"];
  let order = {key: "start", down: false};
  function fill() {
    const rows = v.events.slice().sort(function (a, b) {
      const s = a[order.key] < b[order.key] ? -1 : a[order.key] > b[order.key] ? 1 : 0;
      return order.down ? -s : s;
    });
    body.textContent = "";
    rows.forEach(function (e) {
      const tr = document.createElement("tr");
      keys.forEach(function (k) {
        const td = document.createElement("td");
        td.textContent = k === "confidence" ? e[k].toFixed(3) : String(e[k]);
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { if (video) { video.currentTime = e.start; } });
      body.appendChild(tr);
    });
    tab.querySelectorAll("th").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.key === order.key ? (order.down ? "descending" : "ascending") : "none");
    });
  }
  tab.querySelectorAll("th").forEach(function (th) {
    th.addEventListener("click", function () {
      order = {key: th.dataset.key, down: order.key === th.dataset.key ? !order.down : th.dataset.key === "confidence"};
      fill();
    });
  });
  fill();
}
DATA.forEach(function (v, i) {
  const video = document.getElementById("video-" + i);
  const x = function (t) { return LEFT + (WIDTH - LEFT - 10) * t / v.duration; };
  const cursor = timeline(v, document.getElementById("timeline-" + i), video, x);
  heatmap(v, document.getElementById("heat-" + i), x);
  table(v, document.getElementById("events-" + i), video);
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


def _index(results: list[dict]) -> str:
    """The table of contents of a page with several videos: name (a link to its section), duration, events, lanes."""
    if len(results) < 2:
        return ""
    rows = "".join(f'<tr><td><a href="#v{i}">{html.escape(r["video"])}</a></td><td>{r["duration"]:.1f} s</td>'
                   f'<td>{len(r["events"])}</td><td>{html.escape(_lacks(r) or "audio, visual")}</td></tr>'
                   for i, r in enumerate(results))
    return (f'<table id="index"><tr><th>video</th><th>duration</th><th>events</th><th>lanes</th></tr>{rows}'
            '</table>')


def _lacks(r: dict) -> str:
    return "; ".join(f"{why}: {lane} lane empty" for lane, why in (r.get("missing") or {}).items())


def _section(i: int, r: dict, src: str) -> str:
    lacks = _lacks(r)
    heads = "".join(f'<th data-key="{k}">{k}</th>' for k in ("class", "modality", "start", "end", "confidence"))
    return (f'<section id="v{i}"><h2>{html.escape(r["video"])}</h2>'
            f'<p>{r["duration"]:.2f} s, {r["segments"]} segments of {r["segment_seconds"]:g} s in '
            f'{r["windows"]} window(s), {len(r["events"])} event(s){html.escape("; " + lacks if lacks else "")}</p>'
            f'<div class="row"><video id="video-{i}" controls preload="metadata" '
            f'src="{html.escape(quote(src, safe="/"))}"></video>'
            f'<div><svg id="timeline-{i}" xmlns="http://www.w3.org/2000/svg"></svg>'
            f'<table class="events" id="events-{i}"><thead><tr>{heads}</tr></thead><tbody></tbody></table>'
            f'<svg id="heat-{i}" class="heat" xmlns="http://www.w3.org/2000/svg"></svg></div></div></section>')


def _payload(r: dict, truth: Optional[dict]) -> dict:
    """What the page's script draws of one parse result (and its ground truth, if any)."""
    gt_classes = [g[0] for lane in (truth or {}).values() for g in lane or []]
    return {"video": r["video"], "duration": r["duration"], "segments": r["segments"],
            "segment_seconds": r["segment_seconds"], "missing": r.get("missing") or {},
            "classes": list(dict.fromkeys(event_classes(r["events"]) + gt_classes)),
            "events": [{k: e[k] for k in ("class", "modality", "start", "end", "confidence")} for e in r["events"]],
            "prob": r["segment_prob"], "gt": truth}


def render_page(results: list[dict], videos: list[str], failures: list[dict], checkpoint: str,
                truth: Optional[dict] = None) -> str:
    """The page for `results` (parse JSON dicts), `videos` (each one's src relative to the page), `failures` and the
    ground truth `truth` ({video id: {"audio", "visual": [[class, start, end]] | None}}, workflows.parse_gt)."""
    truth = truth or {}
    sections = [_section(i, r, src) for i, (r, src) in enumerate(zip(results, videos))]
    data = [_payload(r, truth.get(r["video"])) for r in results]
    fail = ""
    if failures:
        rows = "".join(f"<tr><td>{html.escape(f['video'])}</td><td>{html.escape(f['kind'])}</td>"
                       f"<td>{html.escape(f['reason'])}</td></tr>" for f in failures)
        fail = (f'<h2>failed</h2><table id="failures"><tr><th>video</th><th>kind</th><th>reason</th></tr>{rows}'
                '</table>')
    colours = {"audio": AUDIO, "visual": VISUAL, "audio-visual": AV}
    gtkey = '<span class="gt"></span>ground truth' if truth else ""
    return PAGE.substitute(checkpoint=html.escape(checkpoint), audio=AUDIO, visual=VISUAL, av=AV, gtkey=gtkey,
                           index=_index(results), sections="\n".join(sections), failures=fail,
                           data=script_json({"videos": data, "colours": colours, "classes": list(CLASSES)}))
