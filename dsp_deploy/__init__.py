"""dsp-deploy: small, fast time-series classification CNNs for devices, shipped as ONNX."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dsp-deploy")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
