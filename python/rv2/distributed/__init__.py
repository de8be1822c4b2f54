"""Scale-out on Ray: regeneration and prediction across many GPUs and nodes.

- `cluster`: connecting to a Ray cluster (or starting a local one), and the one
  error where Ray is not installed.
- `pool`: long-lived actors (one per GPU or CPU slot), each holding its models;
  the driver hands out batches, re-queues those of lost workers and stops, with the
  worker's name and reason, when one cannot load its models.
- `generate`: `RayExecutor`, the Ray implementation of the executor port of
  `rv2.generate.executor` (workers write sub-stores; the driver's journal decides).
- `predict`: `rv2 predict` over a manifest split across Predictor actors.
- `factory`: the names the CLI wires in (`--executor ray`).

See docs/scale-out.md.
"""
