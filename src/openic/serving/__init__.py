"""Serving a trained model as SageMaker's image-classification endpoint does (spec §4, §7).

- :mod:`.handler`: the pure hooks ``load`` / ``decode`` / ``Predictor.predict`` / ``encode``;
- :mod:`.batching`: dynamic batching of concurrent requests;
- :mod:`.app`: the HTTP routes (Starlette), :mod:`.server`: uvicorn and worker processes;
- :mod:`.onnx_backend`: the ONNX Runtime backend; :mod:`.transform`: batch transform over files.

Serving never imports training or tracking: the artifact and the evaluation transform are its only links.
"""

BACKENDS = ("torch", "torch-bf16", "onnx")  # here, torch-free, so the CLI can offer them without loading torch
BACKEND_HELP = ("torch: eager float32 (the default, MXNet's numbers); torch-bf16: bfloat16 weights and activations "
                "(several times faster where the CPU has AMX or AVX-512 BF16, or on a GPU; probabilities differ "
                "from float32 by ~1e-2); onnx: ONNX Runtime float32, exported once and cached beside the model")
COMPILE_HELP = ("torch.compile a torch backend at load, one graph per batch size bucket (needs a C++ compiler; "
                "adds seconds to start-up; ResNet-18 bf16 batch 1 2.2x faster on an AMX CPU)")
