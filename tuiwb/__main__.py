import sys

from tuiwb.cli import main

sys.exit(main())
