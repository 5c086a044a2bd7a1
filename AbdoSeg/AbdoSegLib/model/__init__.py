"""The network, its bundle file and the preprocessing it was trained with (layer 0)."""
