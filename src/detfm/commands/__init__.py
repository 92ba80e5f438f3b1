"""The sub-commands of the ``detfm`` command line, one module each; :mod:`detfm.cli` assembles them.

Each module defines ``add_parser(sub)`` (argparse sub-parsers) and imports heavy packages
only inside its handlers, so ``detfm --help`` stays fast.
"""
