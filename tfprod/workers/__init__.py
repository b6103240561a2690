"""Serving on every core: `tfprod serve --num_workers N` runs N serving processes on the same
ports under one supervisor (`supervisor`), which act as one server (`pool`)."""
