import sys

from growth.apps.cli import main

sys.exit(main())
