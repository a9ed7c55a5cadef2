"""Learning-dynamics phenomena on the bench (the ``dynamics`` family): see :mod:`.base` and :mod:`.registry`."""
