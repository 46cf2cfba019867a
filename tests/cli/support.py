"""What the command line (``python -m lib_sdfix``) returns, for the CLI and Diagnose tests."""
from __future__ import annotations

from typing import List, Optional, Union


def exit_code(argv: List[str]) -> Optional[Union[int, str]]:
    """``main(argv)``'s return value, or the code of the SystemExit it raised (argparse errors: 2)."""
    from lib_sdfix.cli.__main__ import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code
