"""nlp-contrastive: contrastive fine-tuning of sentence-embedding models on the Hugging Face stack."""

__version__ = "0.1.0"
