"""MONAI Label glue for radvlsm: task configs and thin infer tasks over the ``radvlsm`` library."""
