"""Datasets: adapters to one manifest schema, image IO, statistics."""
