"""The one HTML writer of the package: the set report (`fsd.set_page`) and the inversion report
(`fsd.invert.omissions`) both build their pages here, so they share one look and one set of rules.

Pages open from ``file://`` with no network: inline CSS, one small inline script (sorting and filtering
tables; every page is readable without it), no fonts, CDNs or remote requests. Every link is relative
and escaped (`link`); every text is escaped (`esc`). Sortable tables take cells with an optional sort key
(`Cell`), so numbers sort as numbers and empty cells sort last.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["esc", "link", "Cell", "table", "document", "STYLE", "SCRIPT", "DEFAULT_CLASSES", "DEFAULT_EXAMPLES"]

# The set report's defaults (`fsd.write_html`, ``--html-classes`` / ``--html-examples``): K classes
# of each kind (too few, too many) shown with M real and M generated example images each.
DEFAULT_CLASSES = 8
DEFAULT_EXAMPLES = 6

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #141414; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td.name, th.name { text-align: left; }
td:not(.name) { white-space: nowrap; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
.score { font-size: 1.3em; }
.note { color: #7a4b00; background: #fff6e0; padding: 0.4em 0.8em; border-left: 4px solid #e0a000; }
.muted, .id { color: #666; font-size: 85%; word-break: break-all; }
.photo { display: inline-block; vertical-align: top; margin: 0 1.5em 2em 0; max-width: 540px; }
.photo img { max-width: 100%; }
.examples { display: flex; flex-wrap: wrap; gap: 8px; margin: 0.3em 0 1em 0; }
.example { width: 150px; font-size: 80%; margin: 0; }
.example img { width: 150px; height: 150px; display: block; image-rendering: auto; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #555; vertical-align: middle; }
.side { display: inline-block; vertical-align: top; margin-right: 1em; }
.side img { width: 384px; height: 384px; image-rendering: pixelated; }
img.figure { max-width: 100%; }
.verdict-few { color: #b00020; font-weight: bold; } .verdict-many { color: #0050a0; font-weight: bold; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) v = cell.textContent.trim();
    if (v === "") return null;
    var x = Number(v);
    return isNaN(x) ? v.toLowerCase() : x;
  }
  function compare(a, b) {
    if (a === b) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : 1;
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      th.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending";
        headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.forEach(function (row, i) { row._position = i; });
        rows.sort(function (r, s) {
          var c = compare(key(r.cells[column]), key(s.cells[column]));
          if (c === 0) return r._position - s._position;
          if (key(r.cells[column]) === null || key(s.cells[column]) === null) return c;
          return descending ? -c : c;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    input.hidden = false;
    input.addEventListener("input", function () {
      var wanted = input.value.trim().toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var name = row.cells[0].textContent.toLowerCase();
        row.hidden = wanted !== "" && name.indexOf(wanted) < 0;
      });
    });
  });
})();
"""


def esc(text: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(str(text), quote=True)


def link(path: str) -> str:
    """A relative path (``/``-separated) as an ``href`` or ``src`` value."""
    return html.escape(quote(path), quote=True)


@dataclass(frozen=True)
class Cell:
    """A table cell: its HTML, the key it sorts by (a number or text; ``None``: the text), and a class."""

    html: str
    sort: float | str | None = None
    css: str = ""

    @classmethod
    def number(cls, value: float | None, fmt: str = "{:.4f}") -> Cell:
        """A number shown with ``fmt``; ``None`` shows as an empty cell that sorts last."""
        if value is None:
            return cls("", "")
        return cls(esc(fmt.format(value)), repr(float(value)))


def _cell(cell: Cell | str, tag: str) -> str:
    if not isinstance(cell, Cell):
        cell = Cell(esc(cell))
    attrs = ""
    if cell.css:
        attrs += f' class="{esc(cell.css)}"'
    if cell.sort is not None:
        attrs += f' data-sort="{esc(cell.sort)}"'
    return f"<{tag}{attrs}>{cell.html}</{tag}>"


def table(headers: Sequence[Cell | str], rows: Iterable[Sequence[Cell | str]], *, table_id: str | None = None,
          sortable: bool = False, filterable: bool = False, caption: str | None = None) -> str:
    """A table; ``sortable`` ones reorder by a click on a header, ``filterable`` ones get a search box
    that filters rows by their first cell (shown only where the script runs)."""
    if filterable and table_id is None:
        raise ValueError("a filterable table needs an id")
    parts = []
    if filterable:
        parts.append(f'<p><input type="search" placeholder="filter by name" data-filter="{esc(table_id)}" hidden '
                     f'aria-label="filter the table by class name"></p>')
    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (' class="sortable"' if sortable else "")
    parts.append(f"<table{attrs}>")
    if caption:
        parts.append(f"<caption>{caption}</caption>")
    parts.append("<thead><tr>" + "".join(_cell(h, "th") for h in headers) + "</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(_cell(c, "td") for c in row) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def document(title: str, body: Iterable[str], *, script: bool = True) -> str:
    """A whole page: ``body`` (HTML fragments) under the shared style, with the shared script."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        *body,
    ]
    if script:
        parts.append(f"<script>{SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
