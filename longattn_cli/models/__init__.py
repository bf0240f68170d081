"""The longattn model family: configuration, encoder and heads, checkpoint import/export, the converter, and
the registration with transformers' Auto classes."""
