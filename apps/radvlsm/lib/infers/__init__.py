"""Infer tasks: thin wrappers that turn MONAI Label requests into radvlsm service calls."""
