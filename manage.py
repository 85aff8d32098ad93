#!/usr/bin/env python
"""Django's command line for the reference implementation."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The reference's packages live in reference/; an installed checkout has
    # them on the path already, a plain clone gets them from here.
    sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streaming_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
