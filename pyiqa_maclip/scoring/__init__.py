"""Score whole image collections: resumable, fault-tolerant, sharded with accelerate.

One engine serves ``pyiqa-maclip score`` and ``pyiqa-maclip benchmark``:

* :mod:`.inputs`: which files (folders, path lists, extensions).
* :mod:`.decoding`: files to tensors (strict, EXIF-oriented, 16-bit and float in range).
* :mod:`.journal`: results committed per batch to SQLite; the CSVs are its exports.
* :mod:`.scorers`: MA-CLIP or any pyiqa metric on a batch, with the fingerprint of its numbers.
* :mod:`.run`: the batch loop (:func:`score_into`) and a collection run on an output
  (:func:`score_paths`): locking, resuming, sharding, exporting.
* :mod:`.command`: the ``score`` command's handler.
"""
from .command import score_command
from .decoding import read_image
from .inputs import EXTERNAL_PROGRAM_FORMATS, LIST_SUFFIXES, collect_paths, image_extensions
from .journal import VALUE_COLUMNS, Journal, OutputConflictError, Result, display_path
from .run import (BackboneError, ScoreSummary, WorkFiles, default_num_workers, loading_options, score_into,
                  score_paths)

#: Columns of the scores CSV and of the errors CSV.
COLUMNS = ('path', *VALUE_COLUMNS)
ERROR_COLUMNS = ('path', 'error')

__all__ = [
    'COLUMNS', 'ERROR_COLUMNS', 'EXTERNAL_PROGRAM_FORMATS', 'LIST_SUFFIXES', 'VALUE_COLUMNS',
    'BackboneError', 'Journal', 'OutputConflictError', 'Result', 'ScoreSummary', 'WorkFiles',
    'collect_paths', 'default_num_workers', 'loading_options', 'display_path', 'image_extensions', 'read_image',
    'score_command', 'score_into', 'score_paths',
]
