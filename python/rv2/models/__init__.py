"""Model factories and weight loading (SD components, DenseNet-121, QC classifiers)."""
