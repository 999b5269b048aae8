"""Datasets, class orders, task splits, batching and on-device augmentation."""
