"""Data: the controlled world, real-dataset adapters, and the one record type they both produce."""
