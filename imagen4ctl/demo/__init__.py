"""`imagen4ctl demo`: the empty-gallery incident, replayed offline against the emulator."""
