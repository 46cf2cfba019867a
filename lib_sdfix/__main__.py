"""``python -m lib_sdfix``: the command line of :mod:`lib_sdfix.cli`."""
from lib_sdfix.cli.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
