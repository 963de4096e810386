"""Tools for a checkout of the project, not shipped with the package: the settings table of
docs/CONFIGURATION.md (``settings_table``) and this host's package registries (``registries``),
importable by ``tests/`` and ``bench/`` alike, so that neither imports the other for them."""
