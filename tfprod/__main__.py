import sys

from tfprod.cli import main

sys.exit(main())
