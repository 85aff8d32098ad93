"""Repository-level test configuration.

The conformance plugin loads through its ``pytest11`` entry point once the
project is installed (``pip install -e .[test]``); nothing needs registering
here. The reference's own tests (``tests/``) share this file's fixtures.
"""
