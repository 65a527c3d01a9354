import sys

from armor_export.cli.main import main

sys.exit(main())
