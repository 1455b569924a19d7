"""One public op per module, each with its plain-PyTorch ``*_ref`` beside it."""
