"""``python -m mmclshift`` (also ``torchrun ... -m mmclshift train CONFIG``)."""

import sys

from mmclshift.cli import main

sys.exit(main())
