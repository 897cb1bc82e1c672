"""The batch's records: DIR/report.csv, one line written (and flushed) as each row finishes, and at the end
DIR/report.html, a contact sheet with one axial/coronal/sagittal thumbnail per case (PNG, embedded)."""
from __future__ import annotations

import csv
import html
import os
import time
from pathlib import Path

from .safe_files import atomic_write

FIELDS = ("id", "status", "seconds", "message", "output", "task", "anatomical_sha256", "functional_sha256",
          "weights_sha256", "settings_sha256", "line")


class ReportWriter:
    """Collects row records ({field: value} + an optional base64 PNG "thumbnail") into the two reports."""

    def __init__(self, folder: str | Path, manifest: str | Path):
        self.folder, self.manifest = Path(folder), str(manifest)
        self.csv_path, self.html_path = self.folder / "report.csv", self.folder / "report.html"
        self.records: list[dict] = []
        self._fh = open(self.csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._fh, FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        self._fh.flush()

    def add(self, record: dict) -> None:
        """Append one finished row to report.csv now (flushed to disk: a crash later loses nothing done)."""
        self.records.append(record)
        self._csv.writerow({k: record.get(k, "") for k in FIELDS})
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """report.csv again in manifest order, and report.html; both replaced atomically."""
        self._fh.close()
        ordered = sorted(self.records, key=lambda r: r.get("line", 0))
        _replace(self.csv_path, lambda fh: _write_csv(fh, ordered), newline="")
        _replace(self.html_path, lambda fh: fh.write(render_html(ordered, self.manifest)))


def _write_csv(fh, records) -> None:
    w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows({k: r.get(k, "") for k in FIELDS} for r in records)


def _replace(path: Path, write, **open_kw) -> None:
    def to(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", **open_kw) as fh:
            write(fh)
    atomic_write(path, to)


STYLE = """body{font-family:sans-serif;background:#111;color:#ddd;margin:1em}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#222;padding:6px;border-radius:4px;border:2px solid #222}
figure.failed{border-color:#c33} figure.skipped{opacity:.85}
figcaption{font-size:12px;margin-top:4px;max-width:440px}
.msg{color:#e99;white-space:pre-wrap} .warn{color:#eb6}
img{display:block;image-rendering:auto}"""


def render_html(records: list[dict], manifest: str) -> str:
    """The contact sheet: a summary line, then one figure per row (thumbnail or failure message)."""
    counts = {s: sum(r.get("status") == s for r in records) for s in ("ok", "skipped", "failed")}
    cards = []
    for r in records:
        status = r.get("status", "")
        caption = (f"<b>{html.escape(str(r.get('id', '')))}</b> &middot; {html.escape(str(r.get('task') or ''))} "
                   f"&middot; {html.escape(status)} &middot; {r.get('seconds', '')} s")
        body = ""
        if r.get("thumbnail"):
            body = (f'<img alt="axial, coronal and sagittal views of {html.escape(str(r["id"]))}" '
                    f'src="data:image/png;base64,{r["thumbnail"]}">')
        message = str(r.get("message") or "")
        if message and (status == "failed" or message != "output up to date"):
            css = "msg" if status == "failed" else "warn"
            caption += f'<div class="{css}">{html.escape(message)}</div>'
        cards.append(f'<figure class="{html.escape(status)}">{body}<figcaption>{caption}</figcaption></figure>')
    summary = (f"{len(records)} rows from {html.escape(manifest)}: {counts['ok']} fused, {counts['skipped']} skipped "
               f"(up to date), {counts['failed']} failed &middot; views: axial | coronal | sagittal (middle slices) "
               f"&middot; {time.strftime('%Y-%m-%d %H:%M')}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ECFusion batch report</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>ECFusion batch report</h1>\n<p>{summary}</p>\n"
            f"<div class=\"grid\">\n" + "\n".join(cards) + "\n</div></body></html>\n")
