"""The OpenOOD glue: the ``diffood`` postprocessor, its registration and start-up hook, ``python -m openood.main``,
ImageNet class maps, and :mod:`.compat` (everything that touches OpenOOD's own modules goes through it)."""
