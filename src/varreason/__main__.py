import sys

from varreason.cli import main

sys.exit(main())
