"""Tasks (layer 2): the embedded datasets (:mod:`.data`: MNIST-1D and friends, generated offline),
the byte-level LM corpus (:mod:`.lm_data`) and the training loop (:mod:`.train`)."""
