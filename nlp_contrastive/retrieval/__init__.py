"""The corpus side shared by mining and evaluation: encode into shards (embeddings), search them (search),
mine hard negatives on top (mining)."""
