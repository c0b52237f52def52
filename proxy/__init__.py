"""openrouter-spend: a local reverse proxy that records, prices and caps OpenRouter spend."""

__version__ = "0.1.0"
