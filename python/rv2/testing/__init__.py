"""Test fakes shared by rv2's tests, benchmarks and tools: tiny SD components
(`sd`), stand-in QC networks (`qc`) and prompt tables (`prompts`).

Built in code with fixed seeds; nothing is downloaded. Library code never
imports this package.
"""
