"""Label maps from a model: the predictor (sliding window, test-time augmentation, post-processing), ``segment``
for a user's files, and the bulk engines for archives."""
