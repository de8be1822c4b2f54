"""The demo: a procedural phantom world, bundled tiny trained models, `rv2 demo`.

- `rv2.demo.world`    phantom cases (anatomy, findings, demographics), rendering, marker reader
- `rv2.demo.radiology_reports`  MIMIC-style free-text reports written from the same parameters
- `rv2.demo.sites`    acquisition styles and demographic mixes of the phantom sites
- `rv2.demo.writers`  the world in the official MIMIC-CXR-JPG 2.0.0 + MIMIC-IV layout and
                      one external site in CheXpert's layout
- `rv2.demo.weights/` tiny generator, QC and classifier weights trained on the world by
                      `tools/train_demo_models.py` (each with its config and training record)
- `rv2.demo.pipeline` / `rv2.demo.cli`  `rv2 demo`: every stage through the real commands' code

The demographic markers drawn in the image corners are synthetic markers, not
anatomy: they exist so that the QC classifiers can read sex, race/ethnicity
group and age from a phantom and a generator can learn to draw them.
"""
