"""``python -m llcuda.benchmark [options]``: the same as ``llcuda bench --compare [options]``."""

from __future__ import annotations

import sys

from llcuda.cli.main import main

sys.exit(main(["bench", "--compare", *sys.argv[1:]]))
