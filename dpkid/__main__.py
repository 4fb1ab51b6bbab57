import sys

from dpkid.cli import main

sys.exit(main())
