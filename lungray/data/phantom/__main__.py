"""``python -m lungray.data.phantom --out sheet.png``: a sample sheet of the phantom."""

import sys

from lungray.data.phantom.sheet import main

sys.exit(main())
