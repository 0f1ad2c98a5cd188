"""Training recipes: the large-batch study (and, later, ImageNet)."""
