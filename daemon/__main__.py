"""`python -m omnid.daemon` is `omnid`."""
import sys

from omnid.daemon.cli import main

sys.exit(main())
