import sys

from llcuda.cli.main import main

sys.exit(main())
