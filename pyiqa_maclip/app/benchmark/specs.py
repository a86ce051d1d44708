"""What a checked benchmark configuration holds: one spec per dataset and per metric.

Plain frozen dataclasses, with no pydantic, torch or pyiqa behind them: :mod:`.schema`
checks a configuration's form, :mod:`.resolve` turns it into these specs, and the
runner, the datasets and the tables read only these.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ...errors import UserError

__all__ = ['BenchmarkConfigError', 'DEFAULT_DATA_ROOT', 'BENCHMARKED_COMPONENTS', 'DatasetSpec', 'MetricSpec',
           'BenchmarkConfig', 'file_stem']

DEFAULT_DATA_ROOT = './datasets'  # pyiqa's own default
#: What a MA-CLIP metric can hand to the benchmark as its prediction (``component:``): the score or
#: one of the two qualities it fuses (the weights of the fusion, also in ``names.COMPONENTS``, are not
#: quality predictions).
BENCHMARKED_COMPONENTS = ('score', 'q_sim', 'q_mag')


class BenchmarkConfigError(UserError):
    """The benchmark configuration (or the data it points to) is not usable."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: either ``custom`` (images folder + MOS table) or a ``pyiqa`` dataset."""

    name: str
    kind: str  # 'custom' or 'pyiqa'
    mos_lower_better: bool = False
    resize: tuple[int, int] | None = None  # (H, W)
    resize_mode: str = 'bicubic'
    images: str | None = None
    mos: str | None = None
    image_column: str = 'image'
    mos_column: str = 'mos'
    pyiqa: str | None = None  # the entry of pyiqa's default_dataset_configs.yml
    root: str | None = None  # replaces './datasets' in that entry's paths

    def fingerprint(self) -> dict:
        """Everything that can change the pair's numbers, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != 'name'}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``create_metric(pyiqa_name, **options)``, predicting ``component``."""

    name: str
    pyiqa_name: str
    options: dict = field(default_factory=dict)
    component: str = 'score'
    lower_better: bool = False

    def build_key(self) -> str:
        """Metrics with equal keys build the same model: one scoring pass serves them all."""
        return json.dumps([self.pyiqa_name, self.options], sort_keys=True, default=str)

    def fingerprint(self) -> dict:
        return {'pyiqa_name': self.pyiqa_name, 'options': self.options, 'component': self.component}

    def __hash__(self) -> int:  # options is a dict: hash what equality compares, in JSON form
        return hash((self.name, self.build_key(), self.component, self.lower_better))


@dataclass(frozen=True)
class BenchmarkConfig:
    datasets: tuple[DatasetSpec, ...]
    metrics: tuple[MetricSpec, ...]
    data_root: str = DEFAULT_DATA_ROOT


def file_stem(name: str) -> str:
    """A file-name-safe form of a metric or dataset name (never ``.`` or ``..``)."""
    stem = re.sub(r'[^A-Za-z0-9._+-]', '_', name)
    return stem if stem.strip('.') else stem.replace('.', '_')

