import sys

from lungray.cli import main

sys.exit(main())
