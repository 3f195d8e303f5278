"""Evaluation: performance metrics, overfitting statistics, the Stage 5 checklist, the go/no-go gate and the
HTML/Markdown report. Import the submodules directly (``hmarl.evaluation.metrics`` ...); this package
imports nothing heavy so ``hmarl.config`` can load ``hmarl.evaluation.params`` cheaply."""
