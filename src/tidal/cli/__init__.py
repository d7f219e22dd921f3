"""The ``tidal`` command line."""
