"""Reading-batch codec."""
