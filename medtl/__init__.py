"""medtl: transfer learning for medical images, fast on a CPU."""

from medtl.errors import MedtlError

__version__ = "0.1.0"
__all__ = ["MedtlError", "__version__"]
