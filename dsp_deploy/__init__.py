"""dsp-deploy: small, fast time-series classification CNNs for devices, shipped as ONNX.

``import dsp_deploy`` stays light: ``Classifier`` (onnxruntime + numpy only) and
``__version__`` (``importlib.metadata``) are looked up on first use.
"""

__all__ = ["Classifier", "__version__"]


def __getattr__(name: str):
    if name == "Classifier":
        from dsp_deploy.runtime import Classifier

        return Classifier
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("dsp-deploy")
        except PackageNotFoundError:  # running from a source tree without installation
            return "0.0.0+unknown"
    raise AttributeError(f"module 'dsp_deploy' has no attribute {name!r}")
