"""`python -m bonsai_export` = the `bonsai-export` command."""

import sys

from .cli import main

sys.exit(main())
