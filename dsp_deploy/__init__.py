"""dsp-deploy: small, fast time-series classification CNNs for devices, shipped as ONNX.

``import dsp_deploy`` stays light: ``Classifier`` (onnxruntime + numpy only) is imported
on first use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dsp-deploy")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["Classifier", "__version__"]


def __getattr__(name: str):
    if name == "Classifier":
        from dsp_deploy.runtime import Classifier

        return Classifier
    raise AttributeError(f"module 'dsp_deploy' has no attribute {name!r}")
