"""Applications built on the library (layer 3): the ``grow`` command line (:mod:`.cli`), its
commands as Python functions (:mod:`.commands`), the demos (:mod:`.demo`), the RC diagnostics
(:mod:`.analyze`) and training tracking (:mod:`.track`)."""
