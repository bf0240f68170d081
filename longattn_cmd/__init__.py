"""The ``longattn`` command line.

Kept apart from :mod:`longattn_cli` (the library, which registers the model family with transformers when
imported and so loads torch and transformers) so that ``longattn --help`` starts in a fraction of a second:
nothing here imports ``longattn_cli``, torch or transformers until a command runs.
"""
