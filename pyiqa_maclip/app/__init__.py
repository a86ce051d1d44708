"""The application around the metric: the ``pyiqa-maclip`` command line, collection scoring and the benchmark.

The metric core (:mod:`pyiqa_maclip.functional`, ``encoder``, ``arch``, ``weights``,
``registration``) never imports this package.

* :mod:`.cli` and :mod:`.commands`: the command line, one module per subcommand;
* :mod:`.inputs`, :mod:`.images`: which files, and decoding them;
* :mod:`.engine`, :mod:`.journal`, :mod:`.scorers`: scoring collections, resumably;
* :mod:`.benchmark`: metrics against human opinion scores.
"""
