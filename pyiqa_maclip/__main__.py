"""``python -m pyiqa_maclip`` (and ``accelerate launch -m pyiqa_maclip``): the ``pyiqa-maclip`` command."""
import sys

from .app.cli import main

sys.exit(main())
