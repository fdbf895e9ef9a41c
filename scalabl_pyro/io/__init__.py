"""Files in and out: the embedded assets (:mod:`.assets`), hub access (:mod:`.hub_access`),
loading a base model (:mod:`.loading`), checkpoints (:mod:`.checkpoint`) and the mark on
images this library wrote (:mod:`.image_mark`). Below the data sets and the Pyro program."""
