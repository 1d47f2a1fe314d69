"""Text handling: tokenization and ELMo character ids."""
