"""Train tasks: thin wrappers that turn MONAI Label train requests into radvlsm.training runs."""
