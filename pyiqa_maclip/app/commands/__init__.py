"""The subcommands of ``pyiqa-maclip``, a module each: ``add_parser(subparsers)`` (argparse only, no
torch) and ``run(args) -> int`` (the exit status)."""
