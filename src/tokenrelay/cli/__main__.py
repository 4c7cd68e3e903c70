"""`python -m tokenrelay.cli`: the same as the `tokenrelay` command."""

import sys

from tokenrelay.cli import main

sys.exit(main())
