"""The shared encoder: transformer / BiLSTM / CNN / graph branches fused into one embedding per (bar, symbol)."""
