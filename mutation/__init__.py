"""Mutation testing of the reference: ``python3 dev.py mutate`` (see ``driver.py``)."""
