import sys

from mivae.cli import main

sys.exit(main())
