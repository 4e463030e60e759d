"""Backends, one module each, imported only when selected (see ``unidist_api.registry``)."""
