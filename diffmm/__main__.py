import sys

from diffmm.cli import main

sys.exit(main())
