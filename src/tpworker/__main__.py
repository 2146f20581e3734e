import sys

from tpworker.cli import main

sys.exit(main())
