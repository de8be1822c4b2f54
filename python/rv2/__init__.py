"""rv2: controllable synthetic chest radiographs (RoentGen-v2) as software.

Importing rv2 is cheap on purpose: it loads no model, imports no torch and
touches no GPU. Each stage lives in its own subpackage (data, prompts,
generate, classify, evaluate, ...) and is imported when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
