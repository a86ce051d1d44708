"""``pyiqa-maclip report``: a scored collection shown to choose a threshold, as a PNG or an HTML page.

:mod:`.collection` reads what is shown (scores, components, failures, the metric and its direction),
from the run's journal when it is there, else from the scores file (CSV or Parquet, :mod:`.exports`);
:mod:`.thumbnails` makes the pictures; :mod:`.picture` draws the PNG (thumbnails at evenly spaced quantiles),
:mod:`.html` writes the interactive page (every row, thumbnails across the score range, a live threshold).
"""
from .collection import MARKED_QUANTILES, Collection, Selection, Table, label, read_collection, read_selection, \
    read_table, select_quantiles
from .picture import axis_label, draw_report

__all__ = ['MARKED_QUANTILES', 'Collection', 'Selection', 'Table', 'select_quantiles', 'read_selection',
           'read_collection', 'read_table', 'label', 'draw_report', 'axis_label']
