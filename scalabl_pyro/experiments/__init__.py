"""Studies that fit many models through the :class:`~scalabl_pyro.api.ScalaBL` facade and
write result files: the methods x data sets x seeds grid (:mod:`.benchmark`), the guide-family
comparison (:mod:`.comparison`) and the demo (:mod:`.demo`)."""
