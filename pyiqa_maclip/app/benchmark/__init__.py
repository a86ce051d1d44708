"""Benchmark harness: MA-CLIP and any pyiqa metric against human opinion scores.

``pyiqa-maclip benchmark --config FILE.yml --output-dir DIR [--device DEV]`` scores
every dataset of the configuration with every metric, following the official MA-CLIP
evaluation (Liao et al., AAAI 2026; https://github.com/zhix000/MA-CLIP): whole
datasets, the paper's per-dataset preprocessing, SRCC/KRCC on raw predictions,
PLCC/RMSE after the 5-parameter logistic fit (checked for steps and reversals). It writes ``summary.csv``,
``summary.md`` with bootstrap intervals, ``comparisons.csv`` (every two metrics, paired
differences and p-values), per-image scores and plots, and resumes where a run stopped.

Import from the modules (this package imports none of them, so that the command line can
read a configuration without loading torch):

* :mod:`.specs`: what a checked configuration holds (one spec per dataset and metric).
* :mod:`.schema`: the YAML file and its structure (no torch, no pyiqa).
* :mod:`.resolve`: its names resolved against pyiqa, into specs.
* :mod:`.datasets`: (image, MOS) lists from custom tables or pyiqa's dataset configs.
* :mod:`.evaluation`: correlations and the logistic fit (pure functions).
* :mod:`.statistics`: bootstrap intervals and paired comparisons (pure functions).
* :mod:`.tables`: comparisons between metrics, summary.md, spreadsheet-safe CSV text.
* :mod:`.outputs`: where a run writes, and the record of what it wrote (what a rerun may replace).
* :mod:`.runner`: scoring (through :mod:`pyiqa_maclip.app.engine`), resuming, writing the
  tables; :mod:`.plots`: the figures.
"""
