"""`rv2 serve`: a trained classifier on the Open Inference Protocol (KServe v2).

    protocol.py    the served model, apart from any transport: metadata, request
                   checks, tensor (de)serialisation, outputs (probabilities, labels)
    batcher.py     the dynamic batcher (Triton's knobs), one compute thread
    metrics.py     Prometheus counters and histograms named like Triton's
    service.py     what HTTP and gRPC share: auth, limits, decode, batch, metrics
    http.py        a lean HTTP/1.1 server on asyncio (JSON and binary tensors)
    grpc_service.py  GRPCInferenceService on grpc.aio (tritonclient's definitions)
    server.py      start, ports, readiness, graceful shutdown
    onnx_backend.py  a minimal ONNX Runtime Predictor backend (until rv2.engines has one)

Stock tritonclient HTTP and gRPC clients work against it unchanged.
"""
