"""HTML views of the Fleet dashboard, one module per page group."""
