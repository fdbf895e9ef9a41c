"""Running the Pyro program: training by SVI (:mod:`.train`, multi-process in
:mod:`.distributed`, stop-and-save in :mod:`.interrupt`, whether and how a run resumes
in :mod:`.resume`), Bayesian model averaging
(:mod:`.predict`) and temperature scaling of a BMA (:mod:`.temperature`)."""
