"""Feature attribution: one local-approximation engine, FullGrad, Grad-CAM."""
