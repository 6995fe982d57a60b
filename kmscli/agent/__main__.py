"""``python -m kmscli.agent``: the session agent, started by ``kmscli unlock`` (never by hand)."""

import sys

from kmscli.agent.server import main

if __name__ == "__main__":
    sys.exit(main())
