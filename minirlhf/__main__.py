import sys

from minirlhf.app.cli import main

sys.exit(main())
