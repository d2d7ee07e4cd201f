from .ofa import OFAConfig, OFALegacyModel, OFAModel  # noqa: F401  (registers the models)
