"""Backend-specific fast paths for the recurrent layer, chosen at run time.

`training.model.recurrence` (a `lax.scan` with a hand-written backward pass) runs everywhere and is
the reference. A kernel here replaces it only where it computes the same thing (tests hold each
to the reference) and only on the backends it was built for.
"""
