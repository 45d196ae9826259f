"""One module per CLI subcommand: ``add_parser(subparsers, parents)`` + ``run(args) -> int``.

Commands parse flags and print; the work itself lives in the core modules (``tuiwb.trace``,
``tuiwb.session`` …) so the TUI, the server and notebooks reuse it.
"""
