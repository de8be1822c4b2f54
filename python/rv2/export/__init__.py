"""Export of rv2's networks to portable graphs: each component as a torch module
with its preprocessing folded in (`graphs`), written as pinned ONNX (`onnx_export`).
The engines (`rv2.engines`) are built from these."""
