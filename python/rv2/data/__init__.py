"""Datasets: adapters to one manifest schema, image IO, statistics.

- `schema`: the manifest contract (columns, label order, demographics levels).
- `imageio`: PNG/JPEG/DICOM -> float32 [0, 1] grayscale; transforms; `save_png`.
- `dali`: the same decode + resize with NVIDIA DALI (extra [dali]).
- `index`: `index_dataset(dataset, metadata_files, root)` (`rv2 data index`),
  settings in `config.IndexConfig`; one adapter per dataset in `adapters/`
  (registry `adapters.ADAPTERS`); label and demographic rules in `labels`.
- `report_sections`: radiology report sections (IMPRESSION and synonyms).
- `manifest`: `write_manifest` / `read_manifest` / `read_sidecar`.
- `stats`: the paper's Supplementary Tables 2 and 3 (`rv2 data stats`).

Importing this package imports none of them (no pandas, no torch).
"""
