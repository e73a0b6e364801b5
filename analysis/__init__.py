"""Analyses of finished runs' outputs: study-level models over the views, and mutant vs control phenotyping."""
