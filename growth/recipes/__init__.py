"""Recipes that need more than the engine's plan (layer 2): masked structural growth
(:mod:`.msg`), learned linear growth operators (:mod:`.ligo`) and the transfer of optimizer
state through a growth plan (:mod:`.optstate`)."""
