"""The paper's methods, compute only: each takes a model and preprocessed tensors and returns tensors or a small
result object; rendering lives in `zfnet.render`.

    deconvnet   Sec. 2.1, Fig. 1: project activations back to pixels
    atlas       Fig. 2: top-k activations of every feature map over a dataset
    evolution   Fig. 4: the strongest activation at each training snapshot
    filters     Fig. 5, Sec. 4.1: first-layer filters and their diagnostics
"""
