"""Prompts: report sections, template, offline CLIP tokenizer, 77-token fitting, expansion.

    from rv2.prompts import build_prompts, expand_prompts, PromptsConfig
    df, stats = build_prompts(manifest_df, PromptsConfig())
    expanded = expand_prompts(df, cfg)

Names are imported on first use, so `import rv2.prompts` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_prompts": "rv2.prompts.build", "prompt_id": "rv2.prompts.build",
    "OUTPUT_COLUMNS": "rv2.prompts.build", "expand_prompts": "rv2.prompts.expand",
    "variant_prompt_id": "rv2.prompts.expand", "EXPAND_COLUMNS": "rv2.prompts.expand",
    "PromptsConfig": "rv2.prompts.config", "PromptTemplate": "rv2.prompts.template",
    "clean_impression": "rv2.prompts.template", "extract_impression": "rv2.data.report_sections",
    "extract_sections": "rv2.data.report_sections", "RuleShortener": "rv2.prompts.summarize",
    "HttpSummarizer": "rv2.prompts.summarize", "LLMSettings": "rv2.prompts.summarize",
    "import_authors_csv": "rv2.prompts.authors_csv", "export_authors_csv": "rv2.prompts.authors_csv",
    "clip_tokenizer": "rv2.prompts.tokenizer", "count_tokens": "rv2.prompts.tokenizer",
}
__all__ = [
    "EXPAND_COLUMNS",
    "OUTPUT_COLUMNS",
    "HttpSummarizer",
    "LLMSettings",
    "PromptTemplate",
    "PromptsConfig",
    "RuleShortener",
    "build_prompts",
    "clean_impression",
    "clip_tokenizer",
    "count_tokens",
    "expand_prompts",
    "export_authors_csv",
    "extract_impression",
    "extract_sections",
    "import_authors_csv",
    "prompt_id",
    "variant_prompt_id",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rv2.prompts' has no attribute {name!r}")
