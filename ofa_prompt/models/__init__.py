from . import archs  # noqa: F401  (registers the architectures: archs imports .ofa, the models, first)
from .config import OFAConfig  # noqa: F401
from .ofa import OFALegacyModel, OFAModel  # noqa: F401  (registers the models)
