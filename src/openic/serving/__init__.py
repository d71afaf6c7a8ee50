"""Serving a trained model as SageMaker's image-classification endpoint does (spec §4, §7).

- :mod:`.handler`: the pure hooks ``load`` / ``decode`` / ``Predictor.predict`` / ``encode``;
- :mod:`.batching`: dynamic batching of concurrent requests;
- :mod:`.app`: the HTTP routes (Starlette), :mod:`.server`: uvicorn and worker processes;
- :mod:`.onnx_backend`: the ONNX Runtime backend; :mod:`.transform`: batch transform over files.

Serving never imports training or tracking: the artifact and the evaluation transform are its only links.
"""
