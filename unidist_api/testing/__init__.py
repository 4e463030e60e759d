"""Testing helpers: the pytest plugin that runs a test on every selected backend.

Installed with the package (entry point ``pytest11``), it adds ``--ua-backends`` and
the fixtures ``ua_backend`` and ``ua_serial``; see :mod:`unidist_api.testing.plugin`.
"""
