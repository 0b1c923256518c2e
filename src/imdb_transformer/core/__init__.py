"""The model as plain ``nn.Module``s and its files: the decoder, the backbone's on-disk format (exports
and checkpoints), pooling, and the embedding head with its folder format. No Lightning here."""
