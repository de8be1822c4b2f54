"""Runtimes that schedule rv2's stages: the continuous-batching pipeline executor
(`continuous_executor`) on the native scheduler of rv2._C or its Python twin
(`pipeline_scheduler`), with the generation stage bodies (`generation_bodies`)."""
