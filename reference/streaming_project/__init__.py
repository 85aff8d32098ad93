"""Django project of the reference implementation: settings only, no URLconf.

The HTTP interface is the streaming server (``streaming.server``), not Django's
request handling, so there are no views or URL patterns here.
"""
