"""Named configs shipped with medtrans (installed as ``medtrans.configs``): ``--config NAME`` reads ``NAME.yaml``."""
