"""Self-contained HTML: inline CSS, images as data URIs, no script, font or stylesheet fetched.

A report is opened from a laptop or a mail attachment long after the sweep, often offline, so
nothing in it may point anywhere (issue 4; ``tests/test_report_browser.py`` checks it in a
headless Chromium). All text from MLflow is escaped.
"""

from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import pandas as pd

__all__ = ["esc", "fmt", "fmt_ci", "fmt_p", "fmt_p_eq", "table", "study_table_html", "figure", "note", "Section", "page"]

CSS = """
:root { --fg:#1d232a; --muted:#5b6570; --line:#d9dee3; --accent:#0b5cad; --warn:#8a5300; --warnbg:#fff6e5; --bad:#a4161a; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0; line-height: 1.45; font-size: 14px; background: #fff; }
header { padding: 18px 28px; border-bottom: 1px solid var(--line); background: #f6f8fa; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
main { padding: 8px 28px 40px 28px; max-width: 1400px; }
nav.toc { font-size: 13px; margin: 10px 0; }
nav.toc a { margin-right: 14px; color: var(--accent); text-decoration: none; }
section { border-top: 1px solid var(--line); margin-top: 22px; padding-top: 6px; }
h2 { font-size: 18px; margin: 10px 0; }
h3 { font-size: 15px; margin: 14px 0 6px 0; }
p.intro { color: var(--muted); margin: 4px 0 10px 0; max-width: 980px; }
table { border-collapse: collapse; margin: 6px 0 14px 0; font-size: 12.5px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f1f3f5; text-align: center; }
td.txt, th.txt { text-align: left; }
td.best { font-weight: 700; background: #eaf4ea; }
td.bad { color: var(--bad); }
.note { background: var(--warnbg); color: var(--warn); border-left: 4px solid #e0a030; padding: 6px 10px; margin: 8px 0; max-width: 1100px; }
.error { background: #fdecec; color: #8a1c1c; border-left: 4px solid #c0392b; padding: 6px 10px; margin: 8px 0; max-width: 1100px; font-weight: 600; }
.ok { background: #eef7ee; color: #245c24; border-left: 4px solid #4a9a4a; padding: 6px 10px; margin: 8px 0; }
figure { margin: 8px 0 16px 0; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; max-width: 980px; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 8px; font-size: 12px; overflow-x: auto; max-height: 480px; }
ul.sentences li { margin: 2px 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.muted { color: var(--muted); }
section.headline { border: 1px solid var(--line); border-left: 5px solid var(--accent); background: #fff; margin: 10px 0 12px 0;
                   padding: 8px 14px; max-width: 1180px; }
section.headline h2 { margin: 2px 0 4px 0; }
section.headline ul { margin: 4px 0 6px 0; padding-left: 20px; }
section.headline li { margin: 3px 0; }
section.headline ul.caveats li.warn { color: var(--warn); }
section.headline ul.caveats li.info { color: var(--muted); }
dl.kv { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
"""


def esc(text: object) -> str:
    return _html.escape("" if text is None else str(text), quote=True)


def _isnan(x: object) -> bool:
    try:
        return x is None or (isinstance(x, float) and math.isnan(x)) or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def fmt(x: object, digits: int = 3) -> str:
    """A number for a table cell; NaN/None as an en dash."""
    if _isnan(x):
        return "–"
    if isinstance(x, (int,)) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ci(mean: float, low: float, high: float, n: Optional[int] = None, digits: int = 3) -> str:
    """``0.912 [0.890, 0.934]``; ``0.912 (n=1, no interval)`` when the interval is undefined."""
    if _isnan(mean):
        return "–"
    if _isnan(low) or _isnan(high):
        return f"{mean:.{digits}f} (n={n}, no interval)" if n is not None else f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_p(p: object) -> str:
    """A p-value for a table or a sentence: two significant digits, "<0.0001" below that."""
    if _isnan(p):
        return "–"
    p = float(p)
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


def fmt_p_eq(p: object) -> str:
    """``"p = 0.12"`` or ``"p < 0.0001"`` for a sentence."""
    s = fmt_p(p)
    return "p " + s.replace("<", "< ") if s.startswith("<") else f"p = {s}"


def table(
    df: pd.DataFrame,
    columns: Optional[Sequence[str]] = None,
    headers: Optional[Mapping[str, str]] = None,
    formats: Optional[Mapping[str, Callable[[object], str]]] = None,
    text_columns: Iterable[str] = (),
    cell_class: Optional[Callable[[pd.Series, str], str]] = None,
    max_rows: int = 500,
) -> str:
    """An HTML table of ``df`` (escaped); numbers right-aligned, ``text_columns`` left."""
    if df is None or df.empty:
        return '<p class="muted">(none)</p>'
    columns = list(columns or df.columns)
    headers = headers or {}
    formats = formats or {}
    text = set(text_columns)
    out = ["<table><thead><tr>"]
    for c in columns:
        out.append(f'<th class="{"txt" if c in text else ""}">{esc(headers.get(c, c))}</th>')
    out.append("</tr></thead><tbody>")
    for _, row in df.head(max_rows).iterrows():
        out.append("<tr>")
        for c in columns:
            v = row.get(c)
            s = formats[c](v) if c in formats else (fmt(v) if not isinstance(v, str) else v)
            cls = ["txt"] if (c in text or isinstance(v, str)) else []
            if cell_class:
                extra = cell_class(row, c)
                if extra:
                    cls.append(extra)
            out.append(f'<td class="{" ".join(cls)}">{esc(s)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(df) > max_rows:
        out.append(f'<p class="muted">{len(df) - max_rows} more rows in the CSV.</p>')
    return "".join(out)


def study_table_html(wide: pd.DataFrame) -> str:
    """The model x size grid of :func:`lungray.report.tables.study_table_wide`; best cells
    (marked with a star there) in bold."""
    if wide.empty:
        return '<p class="muted">(no complete trials)</p>'
    out = ['<table><thead><tr><th class="txt">model</th>']
    out += [f"<th>{esc(c)}</th>" for c in wide.columns]
    out.append("</tr></thead><tbody>")
    for lab, row in wide.iterrows():
        out.append(f'<tr><td class="txt">{esc(lab)}</td>')
        for v in row:
            cls = "best" if ("★" in v or "☆" in v) else ("muted" if v == "missing" else "")
            out.append(f'<td class="{cls}">{esc(v)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def figure(uri: str, alt: str, caption: str = "", width: Optional[int] = None) -> str:
    w = f' style="max-width:{int(width)}px"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}"{w}>{cap}</figure>'


def note(text: str, kind: str = "note") -> str:
    return f'<div class="{esc(kind)}">{esc(text)}</div>'


def kv(items: Mapping[str, object]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items()) + "</dl>"


@dataclass
class Section:
    """One numbered report section; ``body`` is trusted HTML built with this module."""

    id: str
    title: str
    body: str
    intro: str = ""
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what failed: a red box at the top, never only a log line

    def render(self, number: int) -> str:
        intro = f'<p class="intro">{esc(self.intro)}</p>' if self.intro else ""
        errors = "".join(note("FAILED: " + e, "error") for e in self.errors)
        notes = "".join(note(n) for n in self.notes)
        return f'<section id="{esc(self.id)}"><h2>{number}. {esc(self.title)}</h2>{errors}{intro}{notes}{self.body}</section>'


def page(title: str, subtitle: str, header_body: str, sections: Sequence[Section], lead: str = "") -> str:
    """The whole document. ``lead`` (trusted HTML: the report's "What this study found") comes
    right under the title, before everything else (issue 20.1)."""
    toc = "".join(f'<a href="#{esc(s.id)}">{i}. {esc(s.title)}</a>' for i, s in enumerate(sections, 1))
    body = "".join(s.render(i) for i, s in enumerate(sections, 1))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # forbid every fetch: a report that tried to load anything would show it as a broken image
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{lead}<div class=\"muted\">{esc(subtitle)}</div>{header_body}"
        f'<nav class="toc">{toc}</nav></header><main>{body}</main></body></html>\n'
    )


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a red box in the report says one line)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def fmt_n_ci(est: float, lo: float, hi: float) -> str:
    """A training size with its interval, ``1,200 [800, ∞]``; ``–`` when there is no estimate."""
    def f(x: float) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "?"
        return "∞" if math.isinf(x) else f"{x:,.0f}"

    if est is None or (isinstance(est, float) and math.isnan(est)):
        return "–"
    return f"{f(est)} [{f(lo)}, {f(hi)}]"
