"""Data modules. Each yields batches of uint8 images (N, C, H, W) and int64 labels; conversion to
float, normalisation and augmentation happen batched on the training device (see
cnnlab.augment.pipeline)."""
