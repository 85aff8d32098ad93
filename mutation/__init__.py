"""Mutation testing of the reference: ``python3 dev.py mutate`` (see ``driver.py``)."""

#: The command that runs it, as the reports and the error messages name it.
COMMAND = "python3 dev.py mutate"
