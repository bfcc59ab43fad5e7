"""Model zoos for accuracy prediction (issue 6): offline datasets, tiny architecture families,
vectorised training of many networks at once, the model folder format, and the non-GMN
baselines with the experiment harness.

- :mod:`.data` — sklearn's 8×8 digits and MNIST-1D generated locally, fixed seeded splits.
- :mod:`.families` — builders: MLP, 2-D CNN, 1-D CNN, ResNet, DeepSets, ViT.
- :mod:`.train_vmap` — ``vmap(grad(functional_call))`` training of one architecture's members.
- :mod:`.plan` — what each chunk trains (architecture and per-member hyperparameters).
- :mod:`.generate` — resumable, chunked, checksummed zoo generation (CLI).
- :mod:`.folder` — the model folder format: ``models.csv`` + ``.safetensors`` + manifest.
- :mod:`.baselines`, :mod:`.experiment`, :mod:`.gmn_method` — accuracy prediction.
"""
