"""Reports: the paper's numbers as tidy tables, our tables beside them, figures."""
