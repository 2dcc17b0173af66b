"""The DiffOOD method: the algorithm (:mod:`.diffood`), its solvers, noise, feature spaces and score."""
