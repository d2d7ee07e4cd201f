from .config import OFAConfig  # noqa: F401
from .ofa import OFALegacyModel, OFAModel  # noqa: F401  (registers the models)
from . import archs  # noqa: F401,E402  (registers their architectures)
