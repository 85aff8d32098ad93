"""``python -m procrastinate_impl HOST PORT GRACE``: the server process (``server.main``).

A launcher of its own, so that procrastinate's apps are made in
``procrastinate_impl.server``, not in the ``__main__`` module (procrastinate
warns of an app made there).
"""

import sys

from procrastinate_impl.server import main

sys.exit(main(sys.argv[1:]))
