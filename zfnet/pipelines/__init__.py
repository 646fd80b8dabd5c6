"""Commands as library calls: open the model and data, run the methods, hand the results to the report."""
