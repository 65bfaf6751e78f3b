"""``python -m firmware_agent``: the same as the ``firmware-agent`` command."""

import sys

from firmware_agent.cli import main

sys.exit(main())
