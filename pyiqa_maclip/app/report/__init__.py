"""``pyiqa-maclip report``: a picture of a scored collection, for choosing a threshold.

:mod:`.collection` chooses what is shown (scores, the rows at evenly spaced quantiles from
worst to best by the metric's direction, failures), from the run's journal when it is there,
else from the scores CSV; :mod:`.picture` draws it as a PNG.
"""
from .collection import MARKED_QUANTILES, Collection, Selection, count_rows, read_collection, read_selection, \
    select_quantiles
from .picture import axis_label, draw_report

__all__ = ['MARKED_QUANTILES', 'Collection', 'Selection', 'select_quantiles', 'read_selection', 'read_collection',
           'count_rows', 'draw_report', 'axis_label']
