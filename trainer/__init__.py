"""A lean OLMo 2 trainer (SPEC.md section 3).

config (dataclasses, presets) -> model (OLMo2) -> loss (CE + z-loss) -> data (memmap
instances, repetition masking via repetition) -> optim / schedule -> train (loop) -> run
(CLI), with checkpoint, soup, spikes, export_hf and throughput alongside. Importing the
package imports nothing heavy; use the submodules.
"""
