"""Research: labelled datasets, evaluation metrics and plots for notebooks."""
