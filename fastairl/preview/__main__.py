"""``python -m fastairl.preview``."""
import sys

from fastairl.preview.cli import main

sys.exit(main())
