"""Sub-commands of the ``detfm`` command line that live outside :mod:`detfm.cli`.

Each module defines ``add_parser(sub)`` (argparse sub-parsers) and imports heavy packages
only inside its handlers, so ``detfm --help`` stays fast.
"""
