"""summary.html: the benchmark's summary as one offline page (issue 31, point 7).

The same sections as summary.md (:func:`~.tables.summary_sections`: the SRCC and PLCC tables
with their intervals, the comparisons between metrics with their significance in words, every
number), then the run's figures embedded as ``data:`` PNGs. Nothing is fetched: no script, no
font, no stylesheet but the one inline, and a Content-Security-Policy that forbids the rest.
Every text (metric and dataset names included) is escaped: a name with markup shows as text.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

import pandas as pd

from .tables import cell_text

__all__ = ['html_summary']

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 78em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.wide { overflow-x: auto; }
code { background: #f4f4f4; padding: 0 0.2em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 36em; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
"""
_CODE = re.compile(r'`([^`]+)`')


def _inline(text: str) -> str:
    """Escaped text with markdown's `code` spans as <code>."""
    return _CODE.sub(lambda m: f'<code>{m[1]}</code>', html.escape(text))


def _paragraph(text: str) -> str:
    lines = text.split('\n')
    items = [line[2:] for line in lines if line.startswith('- ')]
    if items and len(items) == len(lines):
        return '<ul>' + ''.join(f'<li>{_inline(item)}</li>' for item in items) + '</ul>'
    return f'<p>{_inline(text)}</p>'


def _table(frame: pd.DataFrame) -> str:
    head = ''.join(f'<th>{html.escape(cell_text(c))}</th>' for c in frame.columns)
    rows = ''.join('<tr>' + ''.join(f'<td>{html.escape(cell_text(v))}</td>' for v in row) + '</tr>'
                   for row in frame.itertuples(index=False))
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def html_summary(sections: Sequence[tuple[str, list]], figures: Mapping[str, bytes], title: str) -> str:
    """The page: ``sections`` as :func:`~.tables.summary_sections` gives them, then ``figures`` (caption ->
    PNG bytes), under ``title``."""
    body = []
    for level, (heading, blocks) in enumerate(sections):
        tag = 'h1' if level == 0 else 'h2'
        body.append(f'<{tag}>{html.escape(heading)}</{tag}>')
        body += [_table(block) if isinstance(block, pd.DataFrame) else _paragraph(block) for block in blocks]
    if figures:
        body.append('<h2>Figures</h2>')
        for caption, png in figures.items():
            data = base64.b64encode(png).decode('ascii')
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                        f'<figcaption>{html.escape(caption)}</figcaption></figure>')
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f'<style>{_STYLE}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n')
