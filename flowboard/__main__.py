import sys

from flowboard.cli import main

sys.exit(main())
