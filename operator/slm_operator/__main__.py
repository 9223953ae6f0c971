import sys

from slm_operator.cli import main

sys.exit(main())
