import sys

from mmclshift.cli import main

sys.exit(main())
