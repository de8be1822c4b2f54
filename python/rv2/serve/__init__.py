"""`rv2 serve`: a trained classifier on the Open Inference Protocol (KServe v2).

    protocol.py    the served model, apart from any transport: metadata, request
                   checks, tensor (de)serialisation, outputs (probabilities, labels)
    batcher.py     the dynamic batcher (Triton's knobs), one compute thread per instance
    metrics.py     Prometheus counters and histograms named like Triton's
    service.py     what HTTP and gRPC share: auth, limits, decode, batch, metrics
    http.py        a lean HTTP/1.1 server on asyncio (JSON and binary tensors)
    grpc_service.py  GRPCInferenceService on grpc.aio (tritonclient's definitions)
    server.py      start, ports, readiness, graceful shutdown

Compiled backends come from `rv2.engines.load(dir).predictor(model_dir)`.
Stock tritonclient HTTP and gRPC clients work against it unchanged.
"""
