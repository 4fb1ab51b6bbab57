import sys

from dpkid.cli.main import main

sys.exit(main())
