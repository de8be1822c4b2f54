"""Prompts: report sections, template, offline CLIP tokenizer, 77-token fitting, expansion."""
