"""Everything that reads or writes files.

* :mod:`pccompile.io.atomic`: :func:`~pccompile.io.atomic.atomic_output`, the one way pccompile
  publishes a file or a directory (whole, or not at all).
* :mod:`pccompile.io.onnx`: ONNX export of the prediction or of the PC energy.

Nothing here is imported by the conversion pipeline, so this package may depend on the rest of
pccompile and not the other way round. This ``__init__`` imports nothing: import the submodule.
"""
