"""The language model: tokenizers, GPT-2, the batch layout, log-probabilities, generation."""
