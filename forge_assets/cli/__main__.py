"""`python -m forge_assets.cli`: the same as the `forge` console script."""

import sys

from forge_assets.cli import main

sys.exit(main())
