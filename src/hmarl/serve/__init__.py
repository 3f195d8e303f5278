"""Serving a trained model: what a desk and ``hmarl act`` / ``hmarl evaluate`` run.

``bundle`` (the model bundle, loaded and checked whole), ``assemble`` (a bundle written from the pipeline's
outputs), ``inputs`` (new bars as the model reads them), ``decision`` (the decision, once: the master where
due, the symbol agents' orders), ``decider`` (the same decision kept warm between bars), ``positions`` (the
account a decision is for), ``act`` (``hmarl act``: orders, the master's state across processes) and
``evaluate`` (``hmarl evaluate``: a bundle on data).
"""
