"""Vision Transformer assets: offline DINOv2 ViT-S/14 backbone and image datasets."""
