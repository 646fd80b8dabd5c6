"""Experiments: many training runs or classifiers -> tables (Table 2's ablations, ...). Compute only; the tables'
Markdown and plots are drawn by `zfnet.render`."""
