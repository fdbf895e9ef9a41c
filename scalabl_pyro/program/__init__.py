"""The Pyro program: latent subspaces (:mod:`.latents`), the LoRA layers they drive
(:mod:`.adapters`), answer scoring (:mod:`.formats`, :mod:`.scoring`), the model
``model(batch, labels=None)`` (:mod:`.model`), guide families (:mod:`.guides`) and the
training objectives (:mod:`.objectives`). It imports nothing above the data sets."""
