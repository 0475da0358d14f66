"""Writing a `Document` out: one self-contained HTML file, Markdown with PNGs beside it, and the two CSVs."""

import base64
import csv
import html as html_lib
import re
from collections.abc import Sequence
from pathlib import Path

import jinja2
import markupsafe
from tabulate import tabulate

from sweep.report.document import Document, Section, summary_rows, trial_rows
from sweep.report.plots import Plot
from sweep.report.records import Records
from sweep.report.tables import Table

HTML = jinja2.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ doc.title }}</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
         padding: 0 1em; color: #222; line-height: 1.45; }
  h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.6em; }
  table { border-collapse: collapse; margin: .6em 0; font-size: .88em; }
  th, td { border: 1px solid #ccc; padding: .3em .55em; text-align: left; vertical-align: top; }
  th { background: #f3f3f3; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td:first-child { white-space: nowrap; }
  .swatch { display: inline-block; width: .8em; height: .8em; margin-right: .4em; border-radius: 2px; }
  .answer { background: #eaf4ea; border: 2px solid #2e7d32; padding: .6em 1em; margin: 1em 0; }
  .answer p { margin: .2em 0; } .answer p:first-child { font-weight: 600; font-size: 1.1em; }
  .warning { background: #fde8e8; border: 2px solid #c0392b; padding: .8em 1em; margin: 1em 0; font-weight: 600; }
  .caption, figcaption, .meta { color: #555; font-size: .88em; }
  figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
  .scroll { overflow-x: auto; }
</style>
</head>
<body>
<h1>{{ doc.title }}</h1>
{% for warning in doc.warnings %}<div class="warning">{{ warning }}</div>
{% endfor %}
{% for answer in doc.answers %}<div class="answer">{% for line in answer.lines() %}<p>{{ line }}</p>{% endfor %}</div>
{% endfor %}
<p class="meta">Generated {{ doc.generated }}.</p>
<ul class="meta">{% for label, value in doc.sources %}<li>{{ label }}: <code>{{ value }}</code></li>{% endfor %}</ul>
{{ table(doc.facts) }}
<h2>Findings</h2>
{% for section in doc.sections %}{% if doc.sections | length > 1 %}<h3>{{ section.title }}</h3>{% endif %}
<ul>{% for finding in section.findings %}<li>{{ finding }}</li>{% endfor %}</ul>
{% endfor %}
{% for t in doc.tables %}{{ table(t) }}{% endfor %}
{% for section in doc.sections %}
<h2>Plots: {{ section.title }}</h2>
{% for plot in section.plots %}
<h3>{{ plot.title }}</h3>
{% if plot.png %}<figure>
<img src="data:image/png;base64,{{ images[(section.slug, plot.name)] }}" alt="{{ plot.title }}">
<figcaption>{{ plot.caption }}</figcaption></figure>
{% else %}<p class="caption">No figure: {{ plot.note }}.</p>{% endif %}
{% endfor %}
{% endfor %}
</body>
</html>
""", autoescape=True)

TABLE = jinja2.Template("""<h2>{{ t.title }}</h2>
<p class="caption">{{ t.caption }}</p>
<div class="scroll"><table id="{{ t.id }}">
<thead><tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row, color, link in rows %}<tr>{% for cell in row %}<td{% if numeric(cell) %} class="num"{% endif %}>
{%- if loop.first and color %}<span class="swatch" style="background: {{ color }}"></span>{% endif %}
{%- if link and loop.index0 == t.link_column %}<a href="{{ link }}">{{ cell }}</a>{% else %}{{ cell }}{% endif %}</td>
{%- endfor %}</tr>
{% endfor %}</tbody>
</table></div>
""", autoescape=True)


def _numeric(cell: str) -> bool:
    """Right-align numbers such as '1,234', '0.53x', '-0.0100'."""
    return cell.replace(",", "").removesuffix("x").replace(".", "", 1).lstrip("-").isdigit()


def _table_html(t: Table) -> markupsafe.Markup:
    colors = t.colors or [None] * len(t.rows)
    links = t.links or [None] * len(t.rows)
    return markupsafe.Markup(TABLE.render(t=t, rows=zip(t.rows, colors, links), numeric=_numeric))


def plot_file(section: Section, plot: Plot, sections: Sequence[Section]) -> str:
    """`pareto.png`; with several comparisons, prefixed by the comparison so the names stay unique."""
    return f"{plot.name}.png" if len(sections) == 1 else f"{section.slug}.{plot.name}.png"


def html(doc: Document) -> str:
    images = {(s.slug, p.name): base64.b64encode(p.png).decode("ascii") for s in doc.sections for p in s.plots
              if p.png}
    return HTML.render(doc=doc, table=_table_html, images=images)


def text(value: str) -> str:
    """Plain text for Markdown: names come from the records, and a `<script>` or a `[link](...)` in one must
    stay text (the HTML report gets the same from Jinja's autoescape)."""
    return re.sub(r"([\\`\[\]|])", r"\\\1", html_lib.escape(value, quote=False))


def code(value: str) -> str:
    """A Markdown code span that no backtick inside `value` can end."""
    fence = "`" * (max(map(len, re.findall("`+", value)), default=0) + 1)
    return f"{fence} {value} {fence}"


def _table_markdown(t: Table) -> str:
    rows = [[text(cell) for cell in row] for row in t.rows]
    for row, link in zip(rows, t.links):
        if link:
            row[t.link_column] = f"[{row[t.link_column]}](<{link}>)"
    table = tabulate(rows, headers=[text(h) for h in t.headers], tablefmt="github")
    return f"## {text(t.title)}\n\n{text(t.caption)}\n\n{table}\n"


def markdown(doc: Document) -> str:
    parts = [f"# {text(doc.title)}\n", *(f"> **Warning:** {text(warning)}\n" for warning in doc.warnings)]
    parts += ["\n".join(f"> {text(line.strip())}  " for line in answer.lines()) + "\n" for answer in doc.answers]
    parts += [f"Generated {doc.generated}.\n", *(f"- {label}: {code(value)}" for label, value in doc.sources), ""]
    parts += [_table_markdown(doc.facts), "## Findings\n"]
    for section in doc.sections:
        heading = [f"### {text(section.title)}\n"] if len(doc.sections) > 1 else []
        parts += [*heading, *(f"- {text(finding)}" for finding in section.findings), ""]
    parts += [_table_markdown(t) for t in doc.tables]
    for section in doc.sections:
        parts.append(f"## Plots: {text(section.title)}\n")
        for plot in section.plots:
            body = (f"![{text(plot.title)}]({plot_file(section, plot, doc.sections)})\n\n*{text(plot.caption)}*"
                    if plot.png else f"No figure: {text(plot.note)}.")
            parts.append(f"### {text(plot.title)}\n\n{body}\n")
    return "\n".join(parts)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Full float precision (repr), empty cells for missing values: the numbers can be recomputed exactly."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def write(doc: Document, records: Records, directory: Path) -> None:
    """Every file of the report into `directory` (a staging directory: see `publish`)."""
    (directory / "report.html").write_text(html(doc), encoding="utf-8")
    (directory / "report.md").write_text(markdown(doc), encoding="utf-8")
    for section in doc.sections:
        for plot in section.plots:
            if plot.png:
                (directory / plot_file(section, plot, doc.sections)).write_bytes(plot.png)
    _write_csv(directory / "trials.csv", trial_rows(records))
    _write_csv(directory / "summary.csv", summary_rows(doc.comparisons))
