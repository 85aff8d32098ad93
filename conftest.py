"""Repository-level test configuration.

The conformance plugin loads through its ``pytest11`` entry point once the
project is installed (``pip install -e .[test]``); nothing needs registering
here. ``tests/`` tests the harness itself; the reference's own tests live in
``reference/tests/`` and run in a session of their own, under pytest-django
(``pytest -c reference/pytest.ini``).
"""
