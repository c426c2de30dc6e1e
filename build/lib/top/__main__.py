import sys

from top.cli import main

sys.exit(main())
