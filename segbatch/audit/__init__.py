"""Post-hoc audits of stores: where the model is unsure, and whether its uncertainty is honest."""
