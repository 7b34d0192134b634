"""Getting models from a Hugging Face hub: the alias catalog, name resolution, pulls."""
