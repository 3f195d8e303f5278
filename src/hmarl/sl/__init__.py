"""Supervised priors: MLP / LSTM / GRU next-bar direction classifiers and their honest probability cache."""
