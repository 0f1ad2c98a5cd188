"""Command-line tools: ImageNet conversion and synthetic ImageNet-format data."""
