"""The ``llcuda`` command line: :func:`llcuda.cli.main.main` is the entry point."""
