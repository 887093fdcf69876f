import sys

from saeuron.cli.main import main

sys.exit(main())
