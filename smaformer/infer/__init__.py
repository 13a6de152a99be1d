"""Inference: volume inference (the one slice protocol), post-processing, prediction on real scans, and
evaluation with its report. Never imports ``smaformer.train``; training scores validation through here.

Import from the modules (``smaformer.infer.predict.predict``, ``smaformer.infer.evaluate.evaluate``): the
package re-exports nothing, so ``smaformer.infer.evaluate`` is always the module.
"""
