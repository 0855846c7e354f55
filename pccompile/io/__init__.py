"""Everything that reads or writes files.

* :mod:`pccompile.io.atomic`: :func:`~pccompile.io.atomic.atomic_output`, the one way pccompile
  publishes a file or a directory (whole, or not at all).
* :mod:`pccompile.io.artifact`: ``save_converted`` / ``load_converted``, the versioned
  ``pccompile-converted/1`` directory (weights, manifest, graph, code).
* :mod:`pccompile.io.onnx`: ONNX export of the prediction or of the PC energy.
* :mod:`pccompile.io.render`: the PC graph as summary text or JSON, GraphML, DOT, or a PNG.

Nothing here is imported by the conversion pipeline, so this package may depend on the rest of
pccompile and not the other way round. This ``__init__`` imports nothing: import the submodule.
"""
