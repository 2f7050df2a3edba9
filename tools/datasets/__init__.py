"""Dataset preparation: parse, validate, split and store training data."""
