"""abdoseg_train: train the AbdoSeg V-Net on labelled CT and export a model bundle."""
