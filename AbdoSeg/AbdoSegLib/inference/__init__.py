"""From a CT to organ labels on its grid: prediction, sliding window, upsampling, clean-up (layer 1)."""
