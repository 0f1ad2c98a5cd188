"""Training recipes: ResNet-50 and AlexNet on ImageNet, and the large-batch study."""
