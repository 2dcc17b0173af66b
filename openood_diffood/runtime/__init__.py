"""Running the method: the :class:`~openood_diffood.DiffOOD` engine (micro-batches, precision, compilation,
batch sizes), the score cache and torchrun sharding."""
