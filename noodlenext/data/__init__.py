"""Data: the ImageFolder data module, its transforms, image checks and the synthetic dataset."""
