import sys

from growth.cli import main

sys.exit(main())
