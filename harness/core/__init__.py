"""The model core: the method contracts (token mixer, whole architecture), the registry, shared projections,
rotary embeddings, the linear-attention op, the decoder language model and the one model factory.
Nothing here imports a method package."""
