"""Compared methods, one module each. The registry imports every module of this package on first use
(:func:`harness.core.registry.list_methods`), so a new method module registers itself: no edit here."""
